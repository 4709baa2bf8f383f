"""RolloutCallback: turns a batch of prompts into a scored GRPO rollout before each training step, with
one random stream per rank, saved and restored for every rank."""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s sampling stream: the run's seed on rank 0 (a 1-rank run is unchanged),
    a distinct one on every other rank (accelerate and TRL likewise seed each process from the seed and
    its index), so ranks do not draw the same uniforms for their different prompts.

    >>> rank_seed(0, 0), rank_seed(0, 1) != rank_seed(0, 2), rank_seed(7, 0)
    (0, True, 7)
    """
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def run_seed() -> int:
    """The run's ``seed_everything`` (Lightning exports it; 0 when none was set)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices), as ``seed_everything`` does."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_states() -> dict[str, Any]:
    """Every random generator sampling can touch: Python's, NumPy's, torch's CPU and CUDA ones."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    # Plain types and tensors only: checkpoints load with torch.load(weights_only=True).
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]
    states: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RolloutCallback(L.Callback):
    """Before each training step, attaches ``batch["rollout"] = module.make_rollout(batch)`` (sampling,
    rewards, advantages, micro-batch plan and the extra log-probs: ``GRPOModule.make_rollout``), and
    keeps the random generators' state across checkpoints. Groups are never split: each rank samples
    all G completions of its own prompts.

    Randomness per rank: a fresh run reseeds every rank but rank 0 from (seed, rank) (:func:`rank_seed`)
    before the first rollout, so the lean, hf and vLLM engines (whose request seeds come from torch's
    generator) draw independently on each rank.

    Checkpoints carry every rank's generator states as they were after the saved step (gathered from all
    ranks: the checkpoint is written by rank 0, but its callback states are collected on every rank); a
    resumed run puts each rank's back just before its first rollout (after Lightning's own start-up,
    which draws from them when it builds the data loader), so the resumed steps sample what the
    uninterrupted run did, on every rank.
    """

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None
        self._pending_per_rank: list[dict[str, Any]] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        states = capture_rng_states()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, states)
            return {"rng": per_rank[0], "rng_per_rank": per_rank}
        return {"rng": states}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict.get("rng")
        self._pending_per_rank = state_dict.get("rng_per_rank")

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._pending_rng is None and trainer.world_size > 1 and trainer.global_rank > 0:
            seed_all(rank_seed(run_seed(), trainer.global_rank))

    def _restore(self, trainer: L.Trainer) -> None:
        per_rank = self._pending_per_rank
        if per_rank is not None and len(per_rank) == trainer.world_size:
            restore_rng_states(per_rank[trainer.global_rank])
        else:  # a checkpoint of another number of ranks: continue from rank 0's states, reseeded per rank
            restore_rng_states(self._pending_rng)
            if trainer.world_size > 1:
                if trainer.global_rank > 0:
                    seed_all(rank_seed(run_seed() + trainer.global_step, trainer.global_rank))
                saved = len(per_rank) if per_rank is not None else 1
                rank_zero_warn(
                    f"the checkpoint holds the random states of {saved} rank(s) and this run has "
                    f"{trainer.world_size}: rank 0 continues exactly, the other ranks from fresh per-rank seeds"
                )
        self._pending_rng = self._pending_per_rank = None

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: dict, batch_idx: int) -> None:
        if self._pending_rng is not None:
            self._restore(trainer)
        batch["rollout"] = pl_module.make_rollout(batch)
