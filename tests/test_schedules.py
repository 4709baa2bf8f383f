"""Schedules keyed to optimizer steps fire when a batch's step range crosses a multiple of N: with
``num_iterations`` = mu = 3 one batch moves the step by 3, and a ``step % N == 0`` test would skip most
multiples (logging every 2 steps at steps 3, 6, 9 would log only at 6)."""

import pandas as pd
from helpers import fast_args

from r1_lightning.cli.main import main
from r1_lightning.evaluation.grpo_validation import validation_due


def test_logging_every_2_steps_with_mu_3_logs_after_every_batch_that_crosses_a_multiple(tmp_path):
    args = fast_args(
        tmp_path,
        "--model.init_args.num_iterations",
        "3",
        "--model.init_args.rewards",
        '{"helpers.rewards.varied_reward": 1.0}',
        "--trainer.log_every_n_steps",
        "2",
        "--trainer.limit_val_batches",
        "0",
        "--data.init_args.batch_size",
        "4",
        steps=9,
    )
    cli = main(["fit", *args])
    assert cli.trainer.global_step == 9
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    # batches end at steps 3, 6, 9: each crossed a multiple of 2 ((0, 3] holds 2; (3, 6] 4, 6; (6, 9] 8)
    assert metrics.dropna(subset=["train/reward"])["step"].tolist() == [3, 6, 9]


class _Trainer:
    check_val_every_n_epoch = None
    enable_validation = True
    limit_val_batches = 1.0

    def __init__(self, step: int, interval: int) -> None:
        self.global_step, self.val_check_batch = step, interval


def test_validation_due_counts_batches_as_lightning_does():
    # Lightning validates every N *batches*; with mu = 3 a batch is 3 optimizer steps
    assert validation_due(_Trainer(6, 2), steps_per_batch=3)  # batch 2
    assert not validation_due(_Trainer(9, 2), steps_per_batch=3)  # batch 3
    assert validation_due(_Trainer(4, 2))  # mu = 1: steps are batches
