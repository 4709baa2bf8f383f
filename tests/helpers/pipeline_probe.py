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
