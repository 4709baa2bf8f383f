"""Preemption: SIGTERM (what SLURM and Kubernetes send before they stop a job) or Ctrl-C ends a run
at the next step boundary with a checkpoint of that step, and a non-zero exit.

The signal handler only sets a flag: the step in progress (rollout, rewards, update) finishes, then
``on_train_batch_end``, the same point where ``ModelCheckpoint`` saves, writes ``last.ckpt`` (a
checkpoint identical to a scheduled one, so the resume is exact) and raises :class:`Preempted`. The CLI
turns that into the resume command and exit status 128 + signal (143 for SIGTERM, 130 for Ctrl-C).
Under DDP/FSDP the flag is all-reduced every step, so every rank stops at the same step. A second
Ctrl-C interrupts at once, as usual. Lightning's SLURM auto-requeue (its own ``SIGUSR1`` handler)
is left in place.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override


class Preempted(Exception):
    """The run stopped on a signal after writing ``checkpoint`` (None: it stopped before step 1)."""

    def __init__(self, signum: int, checkpoint: str | None, step: int) -> None:
        self.signum, self.checkpoint, self.step = signum, checkpoint, step
        name = signal.Signals(signum).name
        where = f"checkpoint of step {step}: {checkpoint}" if checkpoint else "no step had completed"
        super().__init__(f"stopped by {name} after step {step} ({where})")


class PreemptionCallback(Checkpoint):
    """Installed by the CLI on every ``fit``. See the module docstring.

    A ``Checkpoint`` callback so that Lightning runs it after every other callback's
    ``on_train_batch_end`` (the reward-logging window and ``ModelCheckpoint`` included): the checkpoint
    it writes then holds the whole step, as a scheduled one does.
    """

    best_model_path = ""  # (Lightning reads these from whatever it finds first among Checkpoint callbacks)
    best_model_score = None

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum
        print(
            f"\n{signal.Signals(signum).name} received: finishing the current step, then writing a checkpoint "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning's own handlers are registered (in Trainer._run), so ours is the one that runs.
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank must leave at the same step (collectives would hang)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # a collective under FSDP: every rank calls it
        rank_zero_info(f"checkpoint of step {trainer.global_step} written to {path}")
        raise Preempted(self.received or signal.SIGTERM, str(path), trainer.global_step)

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> Path:
        """``last.ckpt`` in the ``ModelCheckpoint`` folder (where ``--ckpt_path last`` looks first)."""
        callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        folder = getattr(callback, "dirpath", None)
        if folder is None:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        name = getattr(callback, "CHECKPOINT_NAME_LAST", "last") + getattr(callback, "FILE_EXTENSION", ".ckpt")
        return Path(folder) / name
