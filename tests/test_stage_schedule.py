"""StageScheduleCallback: late rewards join at the scheduled step, and the change is logged."""

import pandas as pd
import pytest
from helpers import NO_EVAL
from helpers import fast_args as _fast

from r1_lightning.callbacks import StageScheduleCallback
from r1_lightning.cli.main import main


def test_late_rewards_join_at_their_step_and_are_logged(tmp_path):
    callbacks = (
        '[{"class_path": "r1_lightning.callbacks.StageScheduleCallback", "init_args": {'
        '"late_reward_steps": 2, "late_rewards": {"format_reward": 0.5}}}]'
    )
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "5",
                *NO_EVAL,
                "--trainer.limit_val_batches",
                "0",
                "--trainer.log_every_n_steps",
                "1",
                "--model.init_args.rewards",
                '{"helpers.rewards.varied_reward": 1.0}',
                "--trainer.callbacks",
                callbacks,
            ),
        ]
    )
    schedule = next(cb for cb in cli.trainer.callbacks if isinstance(cb, StageScheduleCallback))
    # steps are 0-based global steps: late rewards from step 3 (the last 2 of 5)
    assert schedule.events == [(3, "late_rewards_added")]
    assert [r.name for r in cli.model.rewards] == ["varied_reward", "format_reward"]
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert metrics.loc[metrics["stage/late_rewards_added"] == 1, "step"].tolist() == [3]


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="late_reward_steps"):
        StageScheduleCallback(late_rewards={"format_reward": 1.0})
    with pytest.raises(TypeError, match="reference_reset_every"):  # one way to reset: ref_model_sync_steps
        StageScheduleCallback(reference_reset_every=2)
