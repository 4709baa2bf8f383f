"""Evaluation that resolves differences: intervals by hand, pass@k, the whole held-out set, benchmark
files (CLI and pipeline stage), the report's columns and behaviour panels, progress lines."""

import csv
import json
import math

import pytest

from r1_lightning.cli.main import main
from r1_lightning.data.tasks import ArithmeticTask
from r1_lightning.errors import ConfigError
from r1_lightning.evaluation.evaluator import Evaluator
from r1_lightning.evaluation.report import write_report
from r1_lightning.evaluation.scoring import mean_ci95, pass_at_k, sampling_ci95
from r1_lightning.pipeline.runner import Pipeline, validate_stages
from r1_lightning.progress import Progress

QUICK = {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8, "stop_strings": ["</answer>"]}


def test_sampling_interval_by_hand():
    # problems with pass@1 0.25, 0.5, 1.0 from k = 4 draws: variances 0.1875/3, 0.25/3, 0
    expected = 1.96 * math.sqrt((0.25 * 0.75 + 0.5 * 0.5) / 3) / 3
    assert sampling_ci95([0.25, 0.5, 1.0], 4) == pytest.approx(expected)
    assert sampling_ci95([0.0, 1.0, 1.0], 16) == 0.0  # settled problems: no sampling noise
    assert sampling_ci95([0.5], 1) == 0.0  # one draw per problem estimates no variance
    # the problem-level interval includes the spread between problems: wider here
    assert mean_ci95([0.25, 0.5, 1.0]) > sampling_ci95([0.25, 0.5, 1.0], 4)


def test_r1_tiny_evaluation_resolves_three_points():
    # the shipped evaluation: 80 held-out problems x 16 samples; the worst case (every problem at
    # p = 0.5) still gives an interval within ±0.03
    assert sampling_ci95([0.5] * 80, 16) <= 0.03


def test_pass_at_k_unbiased_estimator_by_hand():
    # n = 4 samples, c = 2 correct: pass@2 = 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    # estimator is unbiased: the mean over all 2-subsets of 4 draws with 2 correct
    draws, hits = [1, 1, 0, 0], 0
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    hits = sum(draws[i] or draws[j] for i, j in pairs)
    assert pass_at_k(4, 2, 2) == pytest.approx(hits / len(pairs))


def test_pass_at_beyond_num_samples_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"evaluation.pass_at \[8\].*raise evaluation.num_samples"):
        Evaluator(num_samples=4, pass_at=[2, 8])


def test_held_out_set_of_a_small_problem_space_is_taken_whole_and_quickly():
    task = ArithmeticTask(min_value=0, max_value=19, val_fraction=0.2, val_size=1000)
    records = task.val_records(0)
    assert len(records) == len({r["prompt"] for r in records}) == 80
    every = {f"{a} + {b}" for a in range(20) for b in range(20)}
    from r1_lightning.data.tasks import _held_out

    assert {r["prompt"] for r in records} == {p for p in every if _held_out(p, 0.2)}
    # a val_size within the space is unchanged: the first 64 of the same draws
    assert ArithmeticTask(min_value=0, max_value=19, val_size=64).val_records(0) == records[:64]


def _benchmark_file(tmp_path, suffix: str = ".jsonl"):
    rows = [
        {"problem": "What is 2 + 3?", "answer": "5"},
        {"problem": "Compute 10 - 4.", "answer": "6"},
        {"problem": "", "answer": "1"},  # skipped: empty problem (counted, shown with its row number)
        {"problem": "Half of 1?", "answer": "\\frac{1}{2}"},
    ]
    path = tmp_path / f"bench{suffix}"
    if suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_evaluate_command_scores_a_model_folder_on_a_benchmark_file(tmp_path, capsys, caplog, suffix):
    path = _benchmark_file(tmp_path, suffix)
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--model", "tiny:random", "--benchmark", str(path), "--num_samples", "4"]
    args += ["--pass_at", "[2]", "--max_new_tokens", "8", "--output", str(out)]
    main(args)
    metrics = json.loads(out.read_text())
    assert metrics["problems"] == 3 and metrics["samples"] == 12  # every usable row, k samples each
    assert 0.0 <= metrics["pass@1"] <= metrics["pass@2"] <= metrics["pass@k"] <= 1.0
    assert metrics["pass@1_ci95"] >= 0.0 and "maj@k" in metrics
    printed = capsys.readouterr()
    assert "3 problems x 4 samples" in printed.out and "pass@1 " in printed.out
    assert ("line 3" in caplog.text or "row 3" in caplog.text) and "empty_prompt" in caplog.text
    assert "evaluation, problems x 4 samples" in printed.err  # progress line with an ETA
    assert "ETA" in printed.err


def test_evaluate_command_names_a_missing_file_and_a_wrong_column(tmp_path):
    with pytest.raises(ConfigError, match="--benchmark: benchmark file .*nope.jsonl' does not exist"):
        main(["evaluate", "--model", "tiny:random", "--benchmark", str(tmp_path / "nope.jsonl")])
    path = _benchmark_file(tmp_path)
    with pytest.raises(ValueError, match="has no column 'question'.*prompt_column"):
        main(["evaluate", "--model", "tiny:random", "--benchmark", str(path), "--prompt_column", "question"])


def test_pipeline_evaluate_stage_scores_a_benchmark_file(tmp_path):
    path = _benchmark_file(tmp_path)
    evaluator = Evaluator(num_samples=2, sampling=QUICK)
    stages = [{"name": "bench", "kind": "evaluate", "model": "tiny:random", "benchmark": path.name}]
    # a relative path is found beside the pipeline YAML (base_dir)
    pipeline = Pipeline("p", stages, evaluator, output_dir=str(tmp_path / "run"), base_dir=str(tmp_path))
    (record,) = pipeline.run()
    assert record["metrics"]["problems"] == 3
    assert "| bench | evaluate |" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(ValueError, match="`benchmark` belongs to `kind: evaluate` stages"):
        validate_stages([{"name": "sft", "kind": "fit", "config": {}, "benchmark": "x.jsonl"}])


def test_report_has_intervals_pass_at_columns_and_behaviour_panels(tmp_path):
    metrics = {"pass@1": 0.5, "pass@1_ci95": 0.02, "pass@1_ci95_problems": 0.07, "pass@k": 0.9, "pass@4": 0.8}
    metrics.update({"maj@k": 0.6, "format": 1.0, "language": 1.0, "length": 20.0, "problems": 80, "samples": 1280})
    logs = tmp_path / "rl" / "logs" / "version_0"
    logs.mkdir(parents=True)
    with open(logs / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["step", "train/reward", "train/completion_length", "train/reflective_words", "train/cot_language/en"]
        )
        for step in range(1, 6):
            writer.writerow([step, 0.1 * step, 10 + step, 0.01 * step, 1.0])
    stages = [{"name": "rl", "kind": "fit", "metrics": metrics, "seconds": 60.0, "summary": None}]
    write_report(tmp_path, stages, 16)
    report = (tmp_path / "report.md").read_text()
    assert "| pass@1 (95% CI) | pass@4 | pass@16 | maj@16 |" in report
    assert "| rl | fit | 0.500 ± 0.020 | 0.800 | 0.900 | 0.600 |" in report and "80 x 16 |  | 1.0 |" in report
    assert "± 0.070 with problem-to-problem variation" in report
    import matplotlib.image

    height, width = matplotlib.image.imread(tmp_path / "report.png").shape[:2]
    assert height > 500 and width >= 3 * 400  # two rows: stage curves + evaluation, behaviours
    header = (tmp_path / "report.csv").read_text().splitlines()[0]
    assert "pass@4" in header and "maj@16" in header and "problems" in header


def test_progress_lines_count_from_a_resumed_position(capsys):
    import sys

    progress = Progress(10, "stage 'rl': step", every=5, stream=sys.stdout, bar=False, start=5)
    for _ in range(5):
        progress.update(1, reward=0.5)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stage 'rl': step: 10/10 (100%)") and "ETA 0:00" in lines[0]


def test_language_mix_has_fixed_keys_and_word_shares():
    from r1_lightning.rewards.language import language_mix

    mix = language_mix(["<think>We add the two numbers here.</think>", "<think>12+7=19</think>"], ["en", "es", "fr"])
    assert list(mix) == ["en", "es", "fr"] and mix["en"] == pytest.approx(1.0)
    assert language_mix(["<think>1+1=2</think>"], ["en", "es"]) == {"en": 0.0, "es": 0.0}
