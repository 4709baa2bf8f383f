"""The pipeline report (the paper's Dev1 -> Dev2 -> Dev3 -> R1 table): ``write_report`` turns the
stages' results (``evaluation.Evaluator``'s metrics) into ``report.md``, ``report.csv`` and ``report.png``
(each training stage's curves plus the evaluation metrics per stage); no W&B needed.
"""

from __future__ import annotations

import csv
import glob
import logging
from pathlib import Path
from typing import Any

from r1_lightning.evaluation import METRICS

log = logging.getLogger(__name__)


def _training_curves(stage_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Curves worth plotting from a stage's CSV logs (every version, in step order)."""
    wanted = ("train/reward", "train/loss", "train/reward/language_consistency_reward", "val/loss", "val/accuracy")
    curves: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(str(stage_dir / "logs" / "version_*" / "metrics.csv"))):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                for key in wanted:
                    if row.get(key) not in (None, ""):
                        curves.setdefault(key, {})[int(row["step"])] = float(row[key])
    return {key: sorted(points.items()) for key, points in curves.items()}


def write_report(output_dir: Path, stages: list[dict[str, Any]], k: int) -> Path:
    """``report.md`` / ``report.csv`` / ``report.png`` from finished stages' records (``stage.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in stages if s.get("metrics")]
    nan = float("nan")  # (records of an earlier version lack the newer metrics)
    csv_header = ["stage", "kind", *(x.replace("@k", f"@{k}") for x in METRICS), "minutes"]
    with open(output_dir / "report.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_header)
        for s in rows:
            m = s["metrics"]
            values = (round(m.get(x, nan), 4) for x in METRICS)
            writer.writerow([s["name"], s["kind"], *values, round(s["seconds"] / 60, 2)])
    header = ["stage", "kind", "pass@1 (95% CI)", f"pass@{k}", f"maj@{k}", "format", "language", "length", "minutes"]
    lines = [f"| {' | '.join(header)} |", "|" + "|".join(["---"] * len(header)) + "|"]
    for s in rows:
        m = s["metrics"]
        lines.append(
            f"| {s['name']} | {s['kind']} | {m['pass@1']:.3f} ± {m.get('pass@1_ci95', nan):.3f} | "
            f"{m.get('pass@k', nan):.3f} | {m['maj@k']:.3f} | {m['format']:.3f} | {m['language']:.3f} | "
            f"{m['length']:.1f} | {s['seconds'] / 60:.1f} |"
        )
    extra = [f"- {s['name']}: {s['summary']}" for s in stages if s.get("summary")]
    (output_dir / "report.md").write_text(
        "# Pipeline report\n\nHeld-out evaluation after each stage (pass@1 over k samples with its 95% interval "
        "over prompts, unbiased pass@k, maj@k, strict format rate, language consistency of the chain of thought, "
        "mean response length in tokens).\n\n" + "\n".join(lines) + ("\n\n" + "\n".join(extra) if extra else "") + "\n"
    )
    trained = [(s, _training_curves(output_dir / s["name"])) for s in stages if s["kind"] == "fit"]
    trained = [(s, c) for s, c in trained if c]
    panels = len(trained) + (1 if rows else 0)
    if panels:
        fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
        for ax, (stage, curves) in zip(axes[0], trained, strict=False):
            for key, points in curves.items():
                ax.plot(
                    [p[0] for p in points], [p[1] for p in points], label=key, marker="." if len(points) < 20 else None
                )
            ax.set_title(stage["name"]), ax.set_xlabel("step"), ax.legend(fontsize=6)
        if rows:
            ax = axes[0][-1]
            names = [s["name"] for s in rows]
            ci = [s["metrics"].get("pass@1_ci95", 0.0) for s in rows]
            ax.errorbar(names, [s["metrics"]["pass@1"] for s in rows], yerr=ci, marker="o", capsize=3,
                        label="pass@1 (95% CI)")  # fmt: skip
            for metric in ("pass@k", "maj@k", "format", "language"):
                ax.plot(names, [s["metrics"].get(metric, nan) for s in rows], marker="o", label=metric)
            ax.set_title("held-out evaluation"), ax.set_ylim(-0.05, 1.05), ax.legend(fontsize=6)
            ax.tick_params(axis="x", rotation=30, labelsize=7)
        fig.tight_layout()
        fig.savefig(output_dir / "report.png", dpi=110)
        plt.close(fig)
    return output_dir / "report.md"
