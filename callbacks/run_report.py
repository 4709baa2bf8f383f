"""RunReportCallback: a GRPO run's own report of R1's behaviours, written into its log folder.

At the end of ``fit`` it writes ``report.md`` and ``report.png`` beside the run's ``metrics.csv``:

- held-out pass@1 per difficulty over training (``val/pass@1/difficulty_<d>``; overall when the records
  have no ``difficulty`` column),
- mean response length over training, overall and per difficulty (``train/completion_length``,
  ``train/completion_length/difficulty_<d>``), and on the held-out set per difficulty,
- reflective words per response and the share of responses with one (``train/reflective_words``,
  ``train/reflection_rate``),
- the same held-out prompts answered before training and after, side by side (sampled with the
  validation settings; a resumed run keeps the samples of the run's start).

Everything is read from the CSV log, so it needs a ``CSVLogger`` (the shipped configs have one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from r1_lightning.evaluation.report import read_curves
from r1_lightning.evaluation.scoring import score_samples
from r1_lightning.generation.rollout import isolated_rng


class RunReportCallback(L.Callback):
    """Args:
    samples_per_difficulty: held-out prompts shown before/after, per difficulty (or in all).
    """

    def __init__(self, samples_per_difficulty: int = 2) -> None:
        self.samples_per_difficulty = samples_per_difficulty
        self.before: list[dict[str, Any]] = []

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"before": self.before}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = list(state_dict.get("before") or [])

    def _prompts(self, trainer: L.Trainer) -> dict[str, list]:
        datamodule = trainer.datamodule
        if datamodule is None:
            return {}
        batch = next(iter(datamodule.val_dataloader()), None)
        if not batch:
            return {}
        levels = batch.get("difficulty") or ["all"] * len(batch["prompt"])
        chosen: dict[str, list] = {"prompt": [], "difficulty": [], "answer": []}
        counts: dict[str, int] = {}
        for i, level in enumerate(levels):
            if counts.get(str(level), 0) < self.samples_per_difficulty:
                counts[str(level)] = counts.get(str(level), 0) + 1
                chosen["prompt"].append(batch["prompt"][i])
                chosen["difficulty"].append(level)
                chosen["answer"].append((batch.get("answer") or [""] * len(levels))[i])
        order = sorted(range(len(chosen["prompt"])), key=lambda i: str(chosen["difficulty"][i]))
        return {key: [values[i] for i in order] for key, values in chosen.items()}

    def _sample(self, trainer: L.Trainer, pl_module: Any) -> list[dict[str, Any]]:
        chosen = self._prompts(trainer)
        if not chosen or not chosen["prompt"]:
            return []
        with torch.no_grad(), isolated_rng(pl_module.device, seed=12345):
            generation = pl_module.generate(chosen["prompt"], pl_module.val_sampling, group_size=1)
        columns = {key: values for key, values in chosen.items() if key != "prompt"}
        scored = score_samples(generation, chosen["prompt"], columns, 1, pl_module.val_reward_fn)
        return [
            {"prompt": p, "difficulty": d, "answer": a, "completion": text, "correct": ok}
            for p, d, a, text, ok in zip(
                chosen["prompt"], chosen["difficulty"], chosen["answer"], scored.texts, scored.correct, strict=True
            )
        ]

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not self.before and hasattr(pl_module, "generate"):
            self.before = self._sample(trainer, pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        after = self._sample(trainer, pl_module) if hasattr(pl_module, "generate") else []
        if not trainer.is_global_zero:
            return
        logger = next((lg for lg in trainer.loggers if type(lg).__name__ == "CSVLogger"), None)
        if logger is None:
            return
        logger.save()
        folder = Path(logger.log_dir)
        if (folder / "metrics.csv").exists():
            curves = read_curves([folder / "metrics.csv"], lambda key: True)
            write_run_report(folder, curves, self.before, after)


def _question(prompt: str) -> str:
    """The problem inside a rendered R1-Zero prompt (the text after the last "User:")."""
    return prompt.rsplit("User:", 1)[-1].split("Assistant:", 1)[0].strip()


def write_run_report(
    folder: Path, curves: dict[str, list[tuple[int, float]]], before: list[dict], after: list[dict]
) -> None:
    """``report.md`` (first and last values of the behaviour metrics, samples) and ``report.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def first_last(key: str) -> str:
        points = curves.get(key)
        return f"{points[0][1]:.3f} -> {points[-1][1]:.3f}" if points else "n/a"

    def keys(prefix: str) -> list[str]:
        return sorted((k for k in curves if k.startswith(prefix)), key=lambda k: (len(k), k))

    lines = ["# Run report", "", "| metric | first -> last |", "|---|---|"]
    for key in ["val/pass@1", *keys("val/pass@1/difficulty_"), "val/completion_length"]:
        lines.append(f"| {key} | {first_last(key)} |")
    for key in [*keys("val/completion_length/difficulty_"), "train/completion_length"]:
        lines.append(f"| {key} | {first_last(key)} |")
    for key in [*keys("train/completion_length/difficulty_"), "train/reflective_words", "train/reflection_rate"]:
        lines.append(f"| {key} | {first_last(key)} |")
    if before or after:
        lines += ["", "## The same held-out prompts, before and after", ""]
        lines += ["| difficulty | problem (answer) | before | after |", "|---|---|---|---|"]
        for old, new in zip(before, after or [{}] * len(before), strict=False):
            cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            mark = lambda row: {True: " ✓", False: " ✗"}.get(row.get("correct"), "")  # noqa: E731
            lines.append(
                f"| {old['difficulty']} | {cell(_question(old['prompt']))} ({old['answer']}) | "
                f"{cell(old['completion'])}{mark(old)} | {cell(new.get('completion', ''))}{mark(new)} |"
            )
    (folder / "report.md").write_text("\n".join(lines) + "\n")

    panels = (
        ("held-out pass@1", ["val/pass@1", *keys("val/pass@1/difficulty_")]),
        ("response length (training)", ["train/completion_length", *keys("train/completion_length/difficulty_")]),
        ("response length (held-out)", ["val/completion_length", *keys("val/completion_length/difficulty_")]),
        ("reflection", ["train/reflective_words", "train/reflection_rate"]),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3))
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            points = curves.get(name)
            if points:
                label = name.rsplit("/", 1)[-1] if "difficulty_" in name else name
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    label=label,
                    marker="." if len(points) < 12 else None,
                )
        ax.set_title(title), ax.set_xlabel("step"), ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "report.png", dpi=110)
    plt.close(fig)
