"""StepProgressCallback: a training run that reports where it is, with an ETA, on a terminal or in a log file.

Lightning's progress bar is a terminal widget; in a file (``r1-lightning pipeline ... > run.log``, a
SLURM job's output) it is either off or one long line of carriage returns. This callback prints, on rank
zero, a plain line every ``every`` optimizer steps (default: every 10% of ``max_steps``) with the run's
name, the step, the elapsed time, the ETA and the step's loss and reward, through
:class:`r1_lightning.progress.Progress` (a tqdm bar instead when the output is a terminal and
``bar: true``). A resumed run counts from its checkpoint's step.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from typing_extensions import override

from r1_lightning.progress import Progress


class StepProgressCallback(L.Callback):
    """Args:
    description: what the lines are prefixed with (the pipeline passes ``stage 'name'``).
    every: print every this many steps (default: 10% of the run).
    bar: a tqdm bar on a terminal instead of lines (lines in a file either way).
    """

    def __init__(self, description: str = "training", every: int | None = None, bar: bool = False) -> None:
        self.description, self.every, self.bar = description, every, bar
        self.progress: Progress | None = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        every = self.every or max(int(total) // 10, 1)
        self.progress = Progress(
            int(total), f"{self.description}: step", every=every, bar=self.bar or False, start=trainer.global_step
        )

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.progress is None:
            return
        fields: dict[str, float] = {}
        for key in ("loss", "reward"):
            value = (outputs or {}).get(key) if isinstance(outputs, dict) else None
            if value is None and key == "reward" and isinstance(batch, dict) and batch.get("rollout") is not None:
                value = batch["rollout"].rewards.mean()
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (int, float)):
                fields[key] = float(value)
        self.progress.update(1, **fields)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
