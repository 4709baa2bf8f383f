"""CompletionLogCallback: every rollout's prompts, completions, rewards and advantages in a local file (TRL's
``log_completions``), enabled by ``model.init_args.log_completions: true``.

One JSON line per completion in ``<log dir>/completions.jsonl``: ``step`` (the optimizer step the rollout
trained), ``rank``, ``prompt``, ``completion``, ``reward`` (the weighted sum), ``rewards`` (each function's
raw score; null where a function does not apply), ``advantage``. Rank 0 writes every rank's rows (gathered),
appending as it goes. Resume-safe: a run restored at step S first drops the lines of steps after S (what
the killed run wrote after its last checkpoint), so each step appears once, as the resumed run trained it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch


class CompletionLogCallback(L.Callback):
    """Append each step's completions to a JSONL file (see the module docstring).

    Args:
        path: the file (default ``<trainer.log_dir>/completions.jsonl``).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = Path(path) if path else None

    def _file(self, trainer: L.Trainer) -> Path:
        if self.path is None:
            self.path = Path(trainer.log_dir or trainer.default_root_dir) / "completions.jsonl"
        return self.path

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        path = self._file(trainer)
        if not trainer.is_global_zero or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if _step(line) <= trainer.global_step]
        temporary = path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        if rollout is None:
            return
        group = rollout.group_size
        rows = [
            {
                "step": trainer.global_step,
                "rank": trainer.global_rank,
                "prompt": str(batch["prompt"][i // group]),
                "completion": text,
                "reward": float(rollout.rewards[i]),
                "rewards": {name: scores[i] for name, scores in rollout.reward_scores.items()},
                "advantage": float(rollout.advantages[i]),
            }
            for i, text in enumerate(rollout.generation.texts)
        ]
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if trainer.is_global_zero:
            path = self._file(trainer)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)


def _step(line: str) -> int:
    """The step of a logged line (a torn last line, from a kill mid-write, counts as after every step)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
