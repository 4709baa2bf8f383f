"""A callback the DDP test adds by dotted path: records what each rank saw and ended with."""

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


class RankProbe(L.Callback):
    """Writes ``rank<R>.json``: per step the prompts, group layout and a digest of the policy weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollout = batch["rollout"]
        flat = torch.cat([p.detach().flatten().float() for p in pl_module.policy.parameters()])
        self.steps.append(
            {
                "prompts": list(batch["prompt"]),
                "group_size": rollout.group_size,
                "num_completions": int(rollout.rewards.numel()),
                # per group, advantages sum to zero: groups are whole on this rank
                "group_advantage_sums": rollout.advantages.view(-1, rollout.group_size).sum(1).tolist(),
                "weights": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))
