"""The pipeline report (the paper's Dev1 -> Dev2 -> Dev3 -> R1 table): ``write_report`` turns the
stages' results (``evaluation.Evaluator``'s metrics) into ``report.md``, ``report.csv`` and ``report.png``
(each training stage's curves plus the evaluation metrics per stage); no W&B needed.
"""

from __future__ import annotations

import csv
import glob
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from r1_lightning.evaluation.evaluator import METRICS

log = logging.getLogger(__name__)


#: the curves drawn per training stage
STAGE_CURVES = ("train/reward", "train/loss", "train/reward/language_consistency_reward", "val/loss", "val/accuracy")
#: R1's behaviours over RL, drawn across every GRPO stage (the paper's response-length and reflection plots)
BEHAVIOUR_CURVES = ("train/completion_length", "train/reflective_words")
LANGUAGE_PREFIX = "train/cot_language/"


def read_curves(paths: Iterable[str | Path], wanted: Callable[[str], bool]) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from Lightning CSV logs, for the columns ``wanted`` accepts; files
    in order (a later file's value for a step wins: a resumed run's rows), points in step order, empty or
    non-numeric cells skipped."""
    curves: dict[str, dict[int, float]] = {}
    for path in paths:
        with open(path) as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key == "step" or value in (None, "") or not wanted(key):
                        continue
                    try:
                        curves.setdefault(key, {})[int(row["step"])] = float(value)
                    except ValueError:
                        continue
    return {key: sorted(points.items()) for key, points in curves.items()}


def _training_curves(stage_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Curves worth plotting from a stage's CSV logs (every version, in step order)."""
    return read_curves(
        sorted(glob.glob(str(stage_dir / "logs" / "version_*" / "metrics.csv"))),
        lambda key: key in STAGE_CURVES or key in BEHAVIOUR_CURVES or key.startswith(LANGUAGE_PREFIX),
    )


def _pass_at_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The ``pass@<j>`` metrics some stage has (``Evaluator(pass_at=...)``), in order of j."""
    keys = {
        key for s in rows for key in s["metrics"] if key.startswith("pass@") and key[5:].isdigit() and key != "pass@1"
    }
    return sorted(keys, key=lambda key: int(key[5:]))


def stage_change(before: dict[str, float], after: dict[str, float]) -> str:
    """pass@1's change from one stage to the next with the 95% interval of the difference: the two are
    scored on the same problems with independent samples, so the variances add,
    ``CI(diff) = sqrt(CI_1^2 + CI_2^2)``; a change inside it is not a change.

    >>> stage_change({"pass@1": 0.534, "pass@1_ci95": 0.018}, {"pass@1": 0.510, "pass@1_ci95": 0.017})
    '-0.024 ± 0.025'
    """
    if "pass@1_ci95" not in before or "pass@1_ci95" not in after:
        return ""
    spread = (before["pass@1_ci95"] ** 2 + after["pass@1_ci95"] ** 2) ** 0.5
    return f"{after['pass@1'] - before['pass@1']:+.3f} ± {spread:.3f}"


def comparison_line(first: dict[str, Any], second: dict[str, Any]) -> str:
    """One ``compare`` pair's verdict: ``first``'s pass@1 minus ``second``'s, with the 95% interval of the
    difference (:func:`stage_change`), and whether it is above, below, or not distinguishable.

    >>> a = {"name": "student_distilled", "metrics": {"pass@1": 0.61, "pass@1_ci95": 0.03}}
    >>> b = {"name": "student_rl", "metrics": {"pass@1": 0.42, "pass@1_ci95": 0.04}}
    >>> comparison_line(a, b).split(", ", 1)[1]
    'difference +0.190 ± 0.050: **above**, by more than the interval'
    >>> comparison_line(b, {"name": "base", "metrics": {"pass@1": 0.40, "pass@1_ci95": 0.04}}).split(": ")[-1]
    'not distinguishable (the difference is inside its interval)'
    """
    ma, mb = first["metrics"], second["metrics"]
    if "pass@1_ci95" not in ma or "pass@1_ci95" not in mb:
        return f"- {first['name']} vs {second['name']}: no interval recorded"
    difference = ma["pass@1"] - mb["pass@1"]
    spread = (ma["pass@1_ci95"] ** 2 + mb["pass@1_ci95"] ** 2) ** 0.5
    if abs(difference) <= spread:
        verdict = "not distinguishable (the difference is inside its interval)"
    else:
        verdict = f"**{'above' if difference > 0 else 'below'}**, by more than the interval"
    return (
        f"- {first['name']} vs {second['name']}: pass@1 {ma['pass@1']:.3f} vs {mb['pass@1']:.3f}, "
        f"difference {stage_change(mb, ma)}: {verdict}"
    )


def write_report(
    output_dir: Path, stages: list[dict[str, Any]], k: int, comparisons: Iterable[tuple[str, str]] = ()
) -> Path:
    """``report.md`` / ``report.csv`` / ``report.png`` from finished stages' records (``stage.json``), with a
    verdict line per ``comparisons`` pair whose two stages are both evaluated."""
    rows = [s for s in stages if s.get("metrics")]
    nan = float("nan")  # (records of an earlier version lack the newer metrics)
    extra_pass = _pass_at_keys(rows)
    columns = [*METRICS, *extra_pass]
    csv_header = ["stage", "kind", *(x.replace("@k", f"@{k}") for x in columns), "problems", "samples", "minutes"]
    with open(output_dir / "report.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_header)
        for s in rows:
            m = s["metrics"]
            values = (round(m.get(x, nan), 4) for x in columns)
            counts = (int(m.get("problems", 0)), int(m.get("samples", 0)))
            writer.writerow([s["name"], s["kind"], *values, *counts, round(s["seconds"] / 60, 2)])
    header = ["stage", "kind", "pass@1 (95% CI)", *extra_pass, f"pass@{k}", f"maj@{k}", "format", "language"]
    header += ["length", "problems x samples", "Δ pass@1 vs previous (95% CI)", "minutes"]
    lines = [f"| {' | '.join(header)} |", "|" + "|".join(["---"] * len(header)) + "|"]
    for index, s in enumerate(rows):
        m = s["metrics"]
        cells = [s["name"], s["kind"], f"{m['pass@1']:.3f} ± {m.get('pass@1_ci95', nan):.3f}"]
        cells += [f"{m.get(key, nan):.3f}" for key in extra_pass]
        cells += [f"{m.get('pass@k', nan):.3f}", f"{m['maj@k']:.3f}", f"{m['format']:.3f}", f"{m['language']:.3f}"]
        cells += [f"{m['length']:.1f}", f"{int(m.get('problems', 0))} x {k}"]
        cells += [stage_change(rows[index - 1]["metrics"], m) if index else "", f"{s['seconds'] / 60:.1f}"]
        lines.append(f"| {' | '.join(cells)} |")
    extra = [f"- {s['name']}: {s['summary']}" for s in stages if s.get("summary")]
    evaluated = {s["name"]: s for s in rows}
    verdicts = [
        comparison_line(evaluated[a], evaluated[b]) for a, b in comparisons if a in evaluated and b in evaluated
    ]
    intervals = [
        f"- {s['name']}: ± {s['metrics']['pass@1_ci95_problems']:.3f} with problem-to-problem variation"
        for s in rows
        if "pass@1_ci95_problems" in s["metrics"]
    ]
    (output_dir / "report.md").write_text(
        "# Pipeline report\n\nEvaluation after each stage: pass@1 averaged over k samples per problem, with "
        "the 95% interval of this problem set's pass@1 from sampling (what decides whether two stages differ "
        "on it) and its change from the stage before (with the interval of the difference); unbiased pass@k; "
        "maj@k (majority vote over the k answers); strict format rate; language "
        "consistency of the chain of thought; mean response length in tokens.\n\n"
        + "\n".join(lines)
        + ("\n\n" + "\n".join(extra) if extra else "")
        + ("\n\nComparisons (pass@1, 95% interval of the difference):\n" + "\n".join(verdicts) if verdicts else "")
        + ("\n\nWider intervals, for unseen problems of the same kind:\n" + "\n".join(intervals) if intervals else "")
        + "\n"
    )
    _plot(output_dir, stages, rows)
    return output_dir / "report.md"


def _plot(output_dir: Path, stages: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """``report.png``: a panel per training stage, the held-out evaluation per stage, and R1's
    behaviours (response length, reflective words, chain-of-thought languages) across the RL stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nan = float("nan")
    trained = [(s, _training_curves(output_dir / s["name"])) for s in stages if s["kind"] == "fit"]
    trained = [(s, c) for s, c in trained if c]
    rl = [(s, c) for s, c in trained if "train/completion_length" in c]
    top = len(trained) + (1 if rows else 0)
    if not top:
        return
    width = max(top, 3 if rl else 0)
    fig, axes = plt.subplots(2 if rl else 1, width, figsize=(4 * width, 3.2 * (2 if rl else 1)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (stage, curves) in zip(axes[0], trained, strict=False):
        ax.set_visible(True)
        for key, points in curves.items():
            if key in STAGE_CURVES:
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                ax.plot(xs, ys, label=key, marker="." if len(points) < 20 else None)
        ax.set_title(stage["name"]), ax.set_xlabel("step"), ax.legend(fontsize=6)
    if rows:
        ax = axes[0][top - 1]
        ax.set_visible(True)
        names = [s["name"] for s in rows]
        ci = [s["metrics"].get("pass@1_ci95", 0.0) for s in rows]
        ax.errorbar(names, [s["metrics"]["pass@1"] for s in rows], yerr=ci, marker="o", capsize=3,
                    label="pass@1 (95% CI)")  # fmt: skip
        for metric in ("pass@k", "maj@k", "format", "language"):
            ax.plot(names, [s["metrics"].get(metric, nan) for s in rows], marker="o", label=metric)
        ax.set_title("evaluation per stage"), ax.set_ylim(-0.05, 1.05), ax.legend(fontsize=6)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    if rl:
        panels = (
            ("train/completion_length", "response length (tokens)"),
            ("train/reflective_words", "reflective words per response"),
        )
        for ax, (key, title) in zip(axes[1], panels, strict=False):
            ax.set_visible(True)
            for stage, curves in rl:
                points = curves.get(key, [])
                ax.plot([p[0] for p in points], [p[1] for p in points], label=stage["name"])
            ax.set_title(title), ax.set_xlabel("RL step"), ax.legend(fontsize=6)
        ax = axes[1][2]
        ax.set_visible(True)
        for stage, curves in rl:
            for key, points in curves.items():
                if key.startswith(LANGUAGE_PREFIX) and any(p[1] > 0.01 for p in points):
                    label = f"{stage['name']}: {key.removeprefix(LANGUAGE_PREFIX)}"
                    ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
        ax.set_title("chain-of-thought languages (share of words)"), ax.set_xlabel("RL step")
        ax.set_ylim(-0.05, 1.05), ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(output_dir / "report.png", dpi=110)
    plt.close(fig)
