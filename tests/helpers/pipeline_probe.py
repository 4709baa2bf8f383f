"""A callback for tests/test_pipeline.py: SIGKILLs its own process once at a given step (a crash)."""

import os
import signal
from pathlib import Path

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text("killed once")
            os.kill(os.getpid(), signal.SIGKILL)


class KillAllRanksAtStep(L.Callback):
    """SIGKILLs every rank of a data-parallel run at the same step (each rank itself, once: a node lost
    mid-run), right after that step's optimizer update and before its checkpoint."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        marker = self.marker.with_name(f"{self.marker.name}.rank{trainer.global_rank}")
        if trainer.global_step == self.step and not marker.exists():
            marker.write_text("killed once")
            os.kill(os.getpid(), signal.SIGKILL)
