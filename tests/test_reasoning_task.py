"""Issue 18's pieces: the graded task, the worked-out base corpus, per-difficulty metrics, the run report."""

import csv
import random

import pytest
from helpers import fast_args

from r1_lightning.cli.main import main
from r1_lightning.data.tasks import CarryAdditionTask, _held_out
from r1_lightning.tiny.reasoning import ReasoningBaseRecipe, column_steps, completion, worked_text

CONFIG = "configs/r1_zero_reasoning_tiny.yaml"


def test_carry_addition_difficulty_is_the_digit_count_and_held_out_by_hash():
    task = CarryAdditionTask(min_digits=1, max_digits=3, val_size=50)
    rng = random.Random(0)
    for _ in range(200):
        record = task.sample(rng)
        a, b = (int(x) for x in record["prompt"].split(" + "))
        assert len(str(a)) == len(str(b)) == record["difficulty"] and int(record["answer"]) == a + b
    held_out = {r["prompt"] for r in task.val_records(0)}
    assert all(_held_out(p, 0.2) for p in held_out)
    train = [next(iter(task.iter_train(0, 0))) for _ in range(1)]
    assert not {r["prompt"] for r in train} & held_out
    with pytest.raises(ValueError, match="min_digits"):
        CarryAdditionTask(min_digits=3, max_digits=2)


def test_column_sums_add_up_and_a_recheck_fixes_its_slip():
    rng = random.Random(0)
    for _ in range(300):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        steps = column_steps(a, b)
        digits = [total % 10 for *_, total in steps]
        carry = steps[-1][3] // 10
        assert int(("1" if carry else "") + "".join(map(str, reversed(digits)))) == a + b
        text = worked_text(a, b, "recheck", rng)
        assert text.count(" wait, ") == 1 and text.endswith(f"so {a + b}")
        slipped, fixed = text.split(" wait, ")[0].rsplit(". ", 1)[-1], text.split(" wait, ")[1].split(" ")[0]
        assert slipped.split("=")[0] == fixed.split("=")[0] and slipped != fixed.rstrip(".")


def test_corpus_mix_follows_the_recipe():
    recipe, rng = ReasoningBaseRecipe(), random.Random(0)
    texts = [completion(47, 85, recipe, rng) for _ in range(4000)]
    share = lambda needle: sum(needle in t for t in texts) / len(texts)  # noqa: E731
    assert share(" wait, ") == pytest.approx(recipe.recheck, abs=0.02)
    assert share(" carry") == pytest.approx(recipe.columns + recipe.recheck, abs=0.03)
    assert share("The answer is") == pytest.approx(recipe.untagged, abs=0.02)
    assert all("<answer>132</answer>" in t or "The answer is 132." in t for t in texts)  # never wrong


def test_per_difficulty_metrics_and_the_run_report(tmp_path):
    args = fast_args(tmp_path, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", config=CONFIG)
    args += ["--data.init_args.source.init_args.val_size", "12", "--model.init_args.sampling.max_new_tokens", "8"]
    args += ["--trainer.log_every_n_steps", "1", "--model.init_args.val_num_samples", "2"]
    main(["fit", *args])
    (folder,) = list((tmp_path / "r1_zero_reasoning_tiny").glob("version_*"))
    with open(folder / "metrics.csv") as handle:
        columns = set(next(csv.reader(handle)))
    for level in (1, 2, 3):
        assert f"val/pass@1/difficulty_{level}" in columns
        assert f"val/completion_length/difficulty_{level}" in columns
    assert any(c.startswith("train/completion_length/difficulty_") for c in columns)
    assert any(c.startswith("train/accuracy/difficulty_") for c in columns)
    report = (folder / "report.md").read_text()
    assert "| val/pass@1/difficulty_3 |" in report and "| train/reflective_words |" in report
    assert "## The same held-out prompts, before and after" in report
    rows = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) >= 2  # samples from the easiest and the hardest problems
    assert (folder / "report.png").stat().st_size > 0
