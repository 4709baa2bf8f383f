"""A callback the FSDP2 test adds by dotted path: records, per rank, what sharding looked like."""

import json
import math
from pathlib import Path

import lightning as L

from r1_lightning.generation.lean_decode import unsupported_reason
from r1_lightning.models.strategies import gathered


def _reason_gathered(model):
    with gathered(model):
        return unsupported_reason(model, 8)


class ShardProbe(L.Callback):
    """Writes ``rank<R>.json``: per step the decode steps run, the rank's share of the policy's
    parameters, whether the optimizer holds sharded (DTensor) parameters; at the end the evaluations."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from torch.distributed.tensor import DTensor

        params = list(pl_module.policy.parameters())
        optimizer_params = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        self.steps.append(
            {
                "prompts": list(batch["prompt"]),
                "decode_steps": int(batch["rollout"].generation.completion_mask.shape[1]),
                "local_numel": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
                "full_numel": sum(p.numel() for p in params),
                "optimizer_sharded": all(isinstance(p, DTensor) for p in optimizer_params),
                # the lean decode step applies while the weights are gathered for sampling, not outside
                "lean_outside": unsupported_reason(pl_module.policy, 8),
                "lean_gathered": _reason_gathered(pl_module.policy),
                "grad_norm": float(outputs["grad_norm"]) if math.isfinite(float(outputs["grad_norm"])) else "inf",
            }
        )

    def on_fit_end(self, trainer, pl_module) -> None:  # after the module's final evaluation (on_train_end)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"steps": self.steps, "evaluations": [metrics for _, metrics in pl_module.eval_history]}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
