"""reasoning-gym as a data source and reward: its questions, its own verifier, the shipped config."""

from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym (the dev extra) provides the tasks")

from helpers import fast_args

from r1_lightning.cli.main import main  # noqa: E402
from r1_lightning.data import ReasoningGymTask  # noqa: E402
from r1_lightning.rewards.registry import build_reward  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADDITION = {
    "min_terms": 2,
    "max_terms": 2,
    "min_digits": 1,
    "max_digits": 1,
    "operators": ["+"],
    "allow_parentheses": False,
    "allow_negation": False,
}


def test_records_come_from_the_task_and_validation_is_held_out():
    task = ReasoningGymTask("basic_arithmetic", ADDITION, size=200, val_size=8)
    val = task.val_records(seed=0)
    train = list(task.iter_train(seed=0, epoch=0))
    assert len(val) == 8 and train
    assert not {r["prompt"] for r in val} & {r["prompt"] for r in train}
    record = train[0]
    assert record["prompt"].startswith("Calculate") and record["answer"] == str(record["reasoning_gym_entry"]["answer"])
    assert list(task.iter_train(seed=0, epoch=0))[:5] == train[:5]  # reproducible


def test_the_reward_is_the_tasks_own_verifier():
    reward = build_reward("reasoning_gym_reward", 1.0).fn
    entry = ReasoningGymTask("basic_arithmetic", ADDITION, size=5, val_size=1).val_records(0)[0]["reasoning_gym_entry"]
    right, wrong = str(entry["answer"]), str(int(entry["answer"]) + 1)
    completions = [f"<think>...</think> <answer>{right}</answer>", f"<answer>{wrong}</answer>", f"so\n{right}"]
    assert reward(completions, reasoning_gym_entry=[entry] * 3) == [1.0, 0.0, 1.0]
    assert reward(["x"], reasoning_gym_entry=[None]) == [None]


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="reasoning-gym task 'no_such_task'"):
        ReasoningGymTask("no_such_task").val_records(0)


def test_the_shipped_config_trains(tmp_path):
    cli = main(
        [
            "fit",
            *fast_args(
                tmp_path,
                "--data.init_args.batch_size",
                "4",
                config=str(ROOT / "configs" / "reasoning_gym_tiny.yaml"),
                steps=2,
            ),
        ]
    )
    assert cli.trainer.global_step == 2
    header = (Path(cli.trainer.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert "train/reward/reasoning_gym_reward" in header
