"""Scoring a model folder on a benchmark file with the paper's protocol.

``r1-lightning evaluate --model FOLDER --benchmark math500.jsonl`` (or an ``evaluate`` stage of a
pipeline with ``benchmark: ...``) reads a JSONL / JSON / Parquet / CSV file whose rows hold a problem and
its answer (MATH-500 and AIME-style files: ``problem`` / ``answer`` columns; others are named with
``prompt_column`` / ``answer_column``), samples ``num_samples`` completions per problem (R1: T = 0.6,
top-p 0.95) and reports pass@1 with its 95% interval, pass@k, maj@k (majority vote), format and length
(:class:`r1_lightning.evaluation.evaluator.Evaluator`). Every row is scored; rows that cannot be (empty problem,
missing answer) are skipped, counted, and the first few shown with their row number.

The answer is checked by ``accuracy_reward`` (math-verify: ``\\boxed{}``, LaTeX and plain numbers are
compared as mathematical objects), so ``answer`` may be ``"\\frac{1}{2}"`` or ``"0.5"``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from r1_lightning.data.sources import FileSource
from r1_lightning.errors import ConfigError
from r1_lightning.evaluation.evaluator import Evaluator
from r1_lightning.generation.rollout import SamplingConfig

BENCHMARK_KEYS = ("path", "prompt_column", "answer_column", "answer_parser")


def benchmark_source(spec: str | dict[str, Any], where: str = "benchmark") -> FileSource:
    """A :class:`FileSource` that yields every row of a benchmark file as a held-out record.

    ``spec`` is a path, or ``{path, prompt_column: problem, answer_column: answer, answer_parser}``.

    >>> benchmark_source({"path": "aime.jsonl", "prompt_column": "question"})
    Traceback (most recent call last):
    ...
    r1_lightning.errors.ConfigError: benchmark: benchmark file 'aime.jsonl' does not exist
    """
    settings = {"path": spec} if isinstance(spec, str) else dict(spec or {})
    unknown = set(settings) - set(BENCHMARK_KEYS)
    if unknown or "path" not in settings:
        raise ConfigError(
            f"{where}: expected a file path or a mapping with keys {BENCHMARK_KEYS} (`path` required), got {spec!r}"
        )
    path = str(settings["path"])
    if not Path(path).exists():
        raise ConfigError(f"{where}: benchmark file {path!r} does not exist")
    return FileSource(
        path=path,
        prompt_column=settings.get("prompt_column", "problem"),
        answer_column=settings.get("answer_column", "answer"),
        answer_parser=settings.get("answer_parser"),
        val_size=None,  # the whole file
        shuffle_buffer=0,
    )


def evaluate_main(args: list[str]) -> dict[str, float]:
    """Entry point of ``r1-lightning evaluate``: prints the metrics, optionally writes them as JSON."""
    parser = ArgumentParser(
        prog="r1-lightning evaluate",
        description="Score a Hugging Face model folder on a benchmark file (problem/answer columns) with "
        "R1's protocol: k samples per problem at T 0.6 / top-p 0.95, pass@1 with its 95% interval, pass@k, "
        "maj@k (majority vote), format rate and response length.",
    )
    parser.add_argument("--model", type=str, required=True, help="Hugging Face model folder (or tiny:arithmetic)")
    parser.add_argument("--benchmark", type=str, required=True, help="JSONL / JSON / Parquet / CSV file")
    parser.add_argument("--prompt_column", type=str, default="problem")
    parser.add_argument("--answer_column", type=str, default="answer")
    parser.add_argument("--template", type=str, default="r1_zero")
    parser.add_argument("--num_samples", type=int, default=16, help="samples per problem (k)")
    parser.add_argument("--pass_at", type=list[int] | None, default=None, help="extra pass@k, each k <= num_samples")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=16, help="problems per generation batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=str | None, default=None, help="write the metrics here as JSON")
    cfg = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = benchmark_source(
        {"path": cfg.benchmark, "prompt_column": cfg.prompt_column, "answer_column": cfg.answer_column},
        where="--benchmark",
    )
    evaluator = Evaluator(
        source=source,
        template=cfg.template,
        num_samples=cfg.num_samples,
        sampling=SamplingConfig(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            stop_strings=("</answer>",) if cfg.template.startswith("r1_zero") else (),
        ),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        pass_at=cfg.pass_at,
    )
    metrics = evaluator(cfg.model)
    # rows of the file that could not be scored (each shown with its line when read): counted, never silent
    metrics.update({f"skipped_rows/{reason}": float(n) for reason, n in sorted(source.skipped_rows.items())})
    print(format_metrics(metrics, cfg.num_samples, f"{cfg.model} on {cfg.benchmark}"))
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(metrics, indent=2))
    return metrics


def format_metrics(metrics: dict[str, float], k: int, title: str) -> str:
    """Metrics as lines a person reads (the JSON keeps every digit).

    >>> print(format_metrics({"pass@1": 0.5, "pass@1_ci95": 0.02, "pass@k": 0.75, "maj@k": 0.6,
    ...                       "problems": 10.0, "samples": 40.0}, 4, "m on b"))
    m on b: 10 problems x 4 samples
      pass@1 0.500 ± 0.020 (95% interval)
      pass@4 0.750
      maj@4 0.600
    """
    lines = [f"{title}: {int(metrics.get('problems', 0))} problems x {k} samples"]
    lines.append(f"  pass@1 {metrics['pass@1']:.3f} ± {metrics.get('pass@1_ci95', 0.0):.3f} (95% interval)")
    for key, value in metrics.items():
        if key in ("pass@1", "problems", "samples") or key.startswith("pass@1_"):
            continue
        if key.startswith("skipped_rows/"):
            lines.append(f"  {key} {int(value)} (rows of the file not scored)")
            continue
        lines.append(f"  {key.replace('@k', f'@{k}')} {value:.3f}")
    return "\n".join(lines)
