"""Lightning's Rich progress bar without its "Epoch 0/-2" label on runs bounded by steps.

Every GRPO run here is bounded by ``trainer.max_steps``; Lightning then sets ``max_epochs`` to -1, and
its Rich bar labels the epoch as ``f"Epoch {epoch}/{max_epochs - 1}"``, which reads "Epoch 0/-2" on the
first command a new user runs. :func:`label_epochs_sensibly` turns the bar Lightning installed (or one a
config asked for, settings kept) into :class:`StepBoundRichProgressBar`, which leaves out the bound when
there is no epoch limit.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class StepBoundRichProgressBar(RichProgressBar):
    """``RichProgressBar`` whose training label is "Epoch N" when ``max_epochs`` is unbounded (-1)."""

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        # the same padding as Lightning's, so the label does not flicker against "Validation"
        return f"{description:{len(self.validation_description)}}"


def label_epochs_sensibly(trainer: Any) -> None:
    """Give the trainer's plain ``RichProgressBar`` (not a user's subclass) the step-bound label."""
    for callback in trainer.callbacks:
        if type(callback) is RichProgressBar:
            # a class swap keeps whatever the bar was configured with (theme, refresh rate, console)
            callback.__class__ = StepBoundRichProgressBar
