"""Per-stage evaluation and the pipeline report (the paper's Dev1 -> Dev2 -> Dev3 -> R1 table).

``Evaluator`` scores an HF model folder on a held-out prompt set with R1's protocol: ``num_samples``
samples per prompt at T = 0.6, top-p 0.95; pass@1 averaged over them, maj@k, format rate (strict
``<think>…</think><answer>…</answer>``), mean response length in tokens, and language consistency (the
language reward, averaged). ``write_report`` turns the stages' results into ``report.md``, ``report.csv``
and ``report.png`` (each training stage's curves plus the evaluation metrics per stage); no W&B needed.
"""

from __future__ import annotations

import csv
import functools
import glob
import logging
from pathlib import Path
from typing import Any

import torch

from r1_lightning.data.sources import PromptSource
from r1_lightning.data.templates import render_prompt
from r1_lightning.evaluation import group_scores
from r1_lightning.models import load_policy
from r1_lightning.rewards import format_reward, resolve_reward
from r1_lightning.rewards.language import language_consistency_reward
from r1_lightning.rollout import HFGenerator, SamplingConfig, isolated_rng, sample_records

log = logging.getLogger(__name__)

METRICS = ("pass@1", "maj@k", "format", "language", "length")


class Evaluator:
    """Held-out evaluation of a model folder.

    Args:
        source: prompt source; its held-out (validation) records are used, never its training ones.
        template: prompt template (as in training).
        num_samples: samples per prompt (k of pass@1-over-k and maj@k).
        sampling: sampling for evaluation (the paper: T=0.6, top-p 0.95).
        reward: reward whose score >= 1 means correct.
        language: target language of chains of thought (a record's ``language`` column wins).
        batch_size: prompts per generation batch.
        seed: sampling seed (the same for every stage, so stages are compared on equal draws).
    """

    def __init__(
        self,
        source: PromptSource | None = None,
        template: str = "r1_zero",
        num_samples: int = 4,
        sampling: SamplingConfig = SamplingConfig(
            temperature=0.6, top_p=0.95, max_new_tokens=48, stop_strings=("</answer>",)
        ),
        reward: str = "accuracy_reward",
        language: str = "en",
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        from r1_lightning.data.tasks import ArithmeticTask

        self.source = source if source is not None else ArithmeticTask(max_value=19)
        self.template, self.k, self.batch_size, self.seed = template, num_samples, batch_size, seed
        self.sampling = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**dict(sampling))
        self.reward, self.language = resolve_reward(reward), language

    @torch.no_grad()
    def __call__(self, model_path: str) -> dict[str, float]:
        policy, tokenizer = load_policy(model_path)
        policy = policy.to("cuda" if torch.cuda.is_available() else "cpu")
        generator = HFGenerator(tokenizer)
        records = self.source.val_records(self.seed)
        if not records:
            raise ValueError(f"evaluation: {self.source!r} has no held-out records (set its val_size)")
        totals = dict.fromkeys(METRICS, 0.0)
        render = functools.partial(render_prompt, template=self.template, tokenizer=tokenizer)
        with isolated_rng(policy.device, self.seed):
            for _, prompts, columns, generation in sample_records(
                generator, policy, records, render, self.k, self.sampling, self.batch_size
            ):
                texts = generation.texts
                pass1, majority = group_scores(
                    texts, self.reward(completions=texts, prompts=prompts, **columns), self.k
                )
                totals["pass@1"] += sum(pass1)
                totals["maj@k"] += sum(majority)
                languages = [lang or self.language for lang in columns.get("language", [None] * len(texts))]
                totals["format"] += sum(format_reward(texts)) / self.k
                totals["language"] += sum(language_consistency_reward(texts, language=languages)) / self.k
                totals["length"] += float(generation.completion_mask.sum()) / self.k
        return {name: value / len(records) for name, value in totals.items()}


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
    header = ["stage", "kind", "pass@1", f"maj@{k}", "format", "language", "length", "minutes"]
    with open(output_dir / "report.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for s in rows:
            m = s["metrics"]
            writer.writerow([s["name"], s["kind"], *(round(m[x], 4) for x in METRICS), round(s["seconds"] / 60, 2)])
    lines = [f"| {' | '.join(header)} |", "|" + "|".join(["---"] * len(header)) + "|"]
    for s in rows:
        m = s["metrics"]
        lines.append(
            f"| {s['name']} | {s['kind']} | {m['pass@1']:.3f} | {m['maj@k']:.3f} | {m['format']:.3f} | "
            f"{m['language']:.3f} | {m['length']:.1f} | {s['seconds'] / 60:.1f} |"
        )
    extra = [f"- {s['name']}: {s['summary']}" for s in stages if s.get("summary")]
    (output_dir / "report.md").write_text(
        "# Pipeline report\n\nHeld-out evaluation after each stage (pass@1 over k samples, maj@k, strict format "
        "rate, language consistency of the chain of thought, mean response length in tokens).\n\n"
        + "\n".join(lines)
        + ("\n\n" + "\n".join(extra) if extra else "")
        + "\n"
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
            for metric in ("pass@1", "maj@k", "format", "language"):
                ax.plot([s["name"] for s in rows], [s["metrics"][metric] for s in rows], marker="o", label=metric)
            ax.set_title("held-out evaluation"), ax.set_ylim(-0.05, 1.05), ax.legend(fontsize=6)
            ax.tick_params(axis="x", rotation=30, labelsize=7)
        fig.tight_layout()
        fig.savefig(output_dir / "report.png", dpi=110)
        plt.close(fig)
    return output_dir / "report.md"
