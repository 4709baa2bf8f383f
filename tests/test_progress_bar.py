"""The Rich bar's epoch label: "Epoch N" on step-bounded runs, Lightning's "Epoch N/M" otherwise."""

import types

from r1_lightning.callbacks.progress_bar import StepBoundRichProgressBar


def _label(max_epochs):
    bar = StepBoundRichProgressBar()
    bar._trainer = types.SimpleNamespace(max_epochs=max_epochs)
    return bar._get_train_description(0).strip()


def test_step_bounded_runs_show_no_negative_epoch_bound():
    assert _label(-1) == "Epoch 0"


def test_epoch_bounded_runs_keep_lightnings_label():
    assert _label(3) == "Epoch 0/2"
