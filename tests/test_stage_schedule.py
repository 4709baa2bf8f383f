"""StageScheduleCallback: reference resets and late rewards happen at the scheduled steps and are logged."""

import pandas as pd
import pytest
import torch
from helpers import fast_args as _fast

from r1_lightning.callbacks import StageScheduleCallback
from r1_lightning.cli.main import main


def test_schedule_in_a_run(tmp_path):
    callbacks = (
        '[{"class_path": "r1_lightning.callbacks.StageScheduleCallback", "init_args": {"reference_reset_every": 2, '
        '"late_reward_steps": 2, "late_rewards": {"format_reward": 0.5}}}]'
    )
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "5",
                "--model.init_args.validate_at_start",
                "false",
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
    # steps are 0-based global steps: late rewards from step 3 (the last 2 of 5), resets after steps 2 and 4
    assert schedule.events == [(2, "reference_reset"), (3, "late_rewards_added"), (4, "reference_reset")]
    assert [r.name for r in cli.model.rewards] == ["varied_reward", "format_reward"]
    assert cli.model.reference_diverged
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert metrics.loc[metrics["stage/late_rewards_added"] == 1, "step"].tolist() == [3]
    assert metrics.loc[metrics["stage/reference_reset"] == 1, "step"].tolist() == [2, 4]


def test_reference_equals_policy_right_after_a_reset(tmp_path):
    callbacks = (
        '[{"class_path": "r1_lightning.callbacks.StageScheduleCallback", "init_args": {"reference_reset_every": 3}}]'
    )
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "3",
                "--model.init_args.validate_at_start",
                "false",
                "--trainer.limit_val_batches",
                "0",
                "--trainer.callbacks",
                callbacks,
            ),
        ]
    )
    for p, r in zip(cli.model.policy.parameters(), cli.model.reference.parameters(), strict=True):
        torch.testing.assert_close(p, r)


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="late_reward_steps"):
        StageScheduleCallback(late_rewards={"format_reward": 1.0})
    with pytest.raises(ValueError, match="reference_reset_every"):
        StageScheduleCallback(reference_reset_every=0)
