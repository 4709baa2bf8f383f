"""The tool-calling showcase over several seeds: ``configs/r1_zero_tools_tiny.yaml`` once per seed.

    python benchmarks/tools_seeds.py --seeds 0 1

Each seed runs the config in a fresh process (``--seed_everything S``; the ``tiny:tools`` base is built once
and cached), then reads its metrics: held-out pass@1 overall and on 3-digit problems, the share of held-out
samples that called the calculator, pass@1 with and without a call, and the training call rate, at the first
and the last evaluation. Prints a Markdown table and writes ``benchmarks/results/tools-seeds-cpu.json``.
Not a test: about 10 minutes per seed on 2 CPU cores (plus about 4 for the base, once).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "r1_zero_tools_tiny.yaml"
KEYS = (
    "val/pass@1",
    "val/pass@1/difficulty_3",
    "val/tool_use_rate",
    "val/pass@1/with_tools",
    "val/pass@1/without_tools",
)


def run(seed: int, output: Path) -> dict:
    folder = output / f"seed{seed}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [
        sys.executable, "-m", "r1_lightning.cli", "fit", "--config", str(CONFIG), "--seed_everything", str(seed),
        "--trainer.logger.init_args.save_dir", str(folder), "--trainer.default_root_dir", str(folder),
        "--model.init_args.export_dir", str(folder / "hf_model"), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    minutes = (time.perf_counter() - started) / 60
    rows: dict[int, dict[str, float]] = {}
    for path in folder.glob("**/metrics.csv"):
        for row in csv.DictReader(path.open()):
            rows.setdefault(int(row["step"]), {}).update({k: float(v) for k, v in row.items() if v and "/" in k})
    evals = sorted(step for step, row in rows.items() if "val/pass@1" in row)
    calls = [
        row["train/tools/calls_per_completion"]
        for _, row in sorted(rows.items())
        if "train/tools/calls_per_completion" in row
    ]
    return {
        "seed": seed,
        "minutes": minutes,
        "first": {key: rows[evals[0]].get(key) for key in KEYS},
        "last": {key: rows[evals[-1]].get(key) for key in KEYS},
        "last_step": evals[-1],
        "train_calls_per_completion": {"first": calls[0] if calls else None, "last": calls[-1] if calls else None},
    }


def table(results: list[dict]) -> str:
    lines = ["| seed | metric | before RL | after RL |", "|---|---|---|---|"]
    for r in results:
        for key in KEYS:
            first, last = r["first"].get(key), r["last"].get(key)
            lines.append(f"| {r['seed']} | {key} | {_fmt(first)} | {_fmt(last)} |")
        c = r["train_calls_per_completion"]
        lines.append(f"| {r['seed']} | train/tools/calls_per_completion | {_fmt(c['first'])} | {_fmt(c['last'])} |")
        lines.append(f"| {r['seed']} | minutes | | {r['minutes']:.1f} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", type=Path, default=Path("runs/bench-tools"))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "tools-seeds-cpu.json")
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        results.append(run(seed, args.output))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
