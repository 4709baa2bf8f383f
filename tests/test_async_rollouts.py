"""Asynchronous rollouts (``max_staleness``): the synchronous loop unchanged at k = 0, the same rollouts when
weights do not move, the staleness bound, and errors from the scoring thread. Resume with rollouts in flight is
in tests/test_resume.py (1 rank) and tests/test_ddp.py (2 ranks)."""

import csv
import json

import pytest
from helpers import fast_args

from r1_lightning.cli.main import main

TIMING = ("time/", "seconds", "per_s", "staleness")


def _fit(tmp_path, *extra, steps=4):
    main(["fit", *fast_args(tmp_path, "--model.init_args.rewards", "{helpers.rewards.varied_reward: 1.0}",
                            "--data.init_args.batch_size", "2", "--model.init_args.num_generations", "4",
                            "--model.init_args.log_completions", "true", "--trainer.log_every_n_steps", "1",
                            *extra, steps=steps)])  # fmt: skip


def _completions(tmp_path) -> list[dict]:
    (path,) = tmp_path.glob("**/completions.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _train_metrics(tmp_path) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for path in tmp_path.glob("**/metrics.csv"):
        for row in csv.DictReader(path.open()):
            values = {k: float(v) for k, v in row.items() if k.startswith("train/") and v}
            if values:
                rows.setdefault(int(row["step"]), {}).update(values)
    return rows


@pytest.mark.slow
def test_staleness_zero_is_the_synchronous_loop_and_frozen_weights_give_the_same_rollouts(tmp_path):
    """k = 0 is today's loop, bitwise. With lr 0 (weights that never move) k = 1 and k = 2 sample the same
    completions in the same order, score them the same, and train the same losses: only *when* a batch is
    sampled changes, not what."""
    frozen = ["--model.init_args.lr", "0.0", "--model.init_args.warmup_steps", "0"]
    _fit(tmp_path / "default", *frozen)
    _fit(tmp_path / "k0", *frozen, "--model.init_args.max_staleness", "0")
    _fit(tmp_path / "k1", *frozen, "--model.init_args.max_staleness", "1")
    _fit(tmp_path / "k2", *frozen, "--model.init_args.max_staleness", "2")
    default, k0 = _train_metrics(tmp_path / "default"), _train_metrics(tmp_path / "k0")
    assert _completions(tmp_path / "default") == _completions(tmp_path / "k0")
    for step, row in default.items():
        assert {k: v for k, v in row.items() if not any(t in k for t in TIMING)} == {
            k: v for k, v in k0[step].items() if not any(t in k for t in TIMING)
        }
    assert not any("staleness" in key for row in k0.values() for key in row)  # (no async bookkeeping at k = 0)
    for run in ("k1", "k2"):
        assert _completions(tmp_path / run) == _completions(tmp_path / "k0"), run
        metrics = _train_metrics(tmp_path / run)
        for step, row in default.items():
            for key in ("train/reward", "train/loss", "train/kl", "train/entropy", "train/completion_length"):
                assert metrics[step][key] == pytest.approx(row[key], abs=1e-6), (run, step, key)


@pytest.mark.slow
@pytest.mark.parametrize("k, mu, expected", [(2, 1, [0, 1, 2, 2, 2]), (2, 2, [0, 2, 2, 2, 2])])
def test_staleness_is_logged_and_never_above_the_bound(tmp_path, k, mu, expected):
    """Batch b is sampled k // mu batches ahead, from the weights then: at most k optimizer steps old."""
    _fit(tmp_path, "--model.init_args.max_staleness", str(k), "--model.init_args.num_iterations", str(mu),
         "--model.init_args.lr", "1e-3", steps=5 * mu)  # fmt: skip
    rows = sorted(_train_metrics(tmp_path).items())
    staleness = [row["train/staleness/max"] for _, row in rows if "train/staleness/max" in row]
    assert staleness == expected and max(staleness) <= k
    assert all(row["train/staleness/mean"] == row["train/staleness/max"] for _, row in rows if "train/loss" in row)
    # the loss's old log-probs are the sampling weights': the first step's are the current ones (drift 0); once
    # the weights have moved (the warmup's first step has lr 0), a rollout sampled back differs from them
    drift = [row["train/policy_drift"] for _, row in rows if "train/policy_drift" in row]
    assert drift[0] == 0.0 and all(d > 1e-4 for d in drift[2:]), drift
    completions = _completions(tmp_path)
    assert sorted({r["step"] for r in completions}) == [mu * (i + 1) for i in range(5)]  # each batch trained once


@pytest.mark.slow
def test_a_reward_that_raises_in_the_scoring_thread_stops_the_run_naming_it(tmp_path):
    with pytest.raises(RuntimeError, match="reward function 'failing_reward' raised"):
        _fit(tmp_path, "--model.init_args.max_staleness", "1",
             "--model.init_args.rewards", "{failing_reward: {function: helpers.rewards.failing_reward}}",
             steps=2)  # fmt: skip
