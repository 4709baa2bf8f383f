"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``) for GRPO.

Why FSDP2 and not Lightning's ``FSDPStrategy`` (FSDP1): GRPO optimises manually and samples outside
the training forward. FSDP1 wraps the whole LightningModule in a root unit whose forward redirects to
``training_step``; backward then runs *inside* that forward, the root's end-of-backward hook never
fires, and afterwards its units refuse to gather (no export, NaN evaluations, optimizer-state
checkpoints failing on tied embeddings: measured on an H100). FSDP2 shards each parameter as a
``DTensor`` with hooks on the sharded modules only; there is no root forward to be inside of, the
optimizer is built on the sharded parameters, and torch's distributed state-dict helpers gather
full weights for export. It also runs on CPU (gloo), so it is tested in CI with two processes.

:class:`FSDP2Strategy` is Lightning's ``ModelParallelStrategy`` with every device in the data-parallel
(sharding) dimension by default; the module's ``configure_model`` calls :func:`shard_model`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from r1_lightning.hf_compat import causal_lm


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all devices of all nodes: ``data_parallel_size`` defaults to the world size.

    (``ModelParallelStrategy`` on its own defaults to tensor parallelism within a node, which GRPO does
    not use.) The other arguments are ``ModelParallelStrategy``'s.
    """

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        save_distributed_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def is_sharded(module: Any) -> bool:
    """Whether any submodule of ``module`` is an FSDP2 unit."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def shard_model(model: Any, mesh: Any) -> None:
    """``fully_shard`` each decoder layer of a transformers model, then the model itself (in place).

    Decoder layers are the classes the model names in ``_no_split_modules`` (the same units
    ``device_map`` never splits); the root unit keeps embeddings, final norm and LM head, so tied
    embedding and head weights stay one parameter. Called for the policy and the frozen reference.
    """
    from torch.distributed.fsdp import fully_shard

    lm = causal_lm(model)
    layer_names = set(getattr(lm, "_no_split_modules", None) or ())
    layers = [m for m in lm.modules() if type(m).__name__ in layer_names]
    if not layers:
        raise ValueError(
            f"FSDP2: {type(lm).__name__} names no decoder layer class in `_no_split_modules`; "
            "cannot choose the sharded units"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(lm, mesh=mesh)


@contextlib.contextmanager
def gathered(model: Any) -> Iterator[None]:
    """Hold ``model``'s full weights on every rank for the block (sampling, no-grad scoring).

    Each FSDP2 unit is all-gathered once and kept (not resharded after every forward), so decoding
    L tokens costs one gather per unit instead of L; the weights are resharded on exit. Every rank
    needs memory for the full weights meanwhile, as in colocated rollout engines. No-op when
    ``model`` is not sharded.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of an FSDP2 model on CPU; every rank must call it (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
