"""A learning showcase over several bases and RL seeds: does it hold on any CPU?

    python benchmarks/showcase_seeds.py reasoning --runs 5
    python benchmarks/showcase_seeds.py tools --runs 5

Run ``i`` pretrains its own tiny base with pretraining seed ``i`` (``model: tiny:<name>?seed=i``: another
initialisation and corpus draw, which stands in for another CPU's arithmetic, since the tiny base a machine
builds differs with its floating-point kernels) and then runs the shipped config with ``--seed_everything
100 + i`` (another RL seed). Each run is a fresh process; ``--parallel 2`` runs two at a time with one
thread each (the tiny models use one core no worse than two).

A run **holds** for ``reasoning`` when held-out pass@1 rises by at least ``--min-gain`` (0.05) and the held-out
response length rises too (accuracy and length rising together, R1-Zero's signature); for ``tools``, when
3-digit pass@1 rises by ``--min-gain`` (0.30, the issue's bar) and the held-out tool-use rate rises. Prints a
Markdown table of every run (first and last evaluation) and the spread, and writes
``benchmarks/results/<showcase>-seeds-cpu.json``; ``--collect`` only reads runs already in ``--output``.
Not a test: about 10 minutes per run on 2 CPU cores (base build included).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOWCASES = {
    "reasoning": {
        "config": ROOT / "configs" / "r1_zero_reasoning_tiny.yaml",
        "base": "tiny:reasoning",
        "keys": (
            "val/pass@1",
            "val/completion_length",
            "val/pass@1/difficulty_1",
            "val/pass@1/difficulty_2",
            "val/pass@1/difficulty_3",
            "val/completion_length/difficulty_2",
            "val/completion_length/difficulty_3",
        ),
    },
    "tools": {
        "config": ROOT / "configs" / "r1_zero_tools_tiny.yaml",
        "base": "tiny:tools",
        "keys": (
            "val/pass@1",
            "val/pass@1/difficulty_3",
            "val/tool_use_rate",
            "val/pass@1/with_tools",
            "val/pass@1/without_tools",
        ),
    },
}


def run(showcase: str, index: int, output: Path, threads: int) -> dict:
    spec = SHOWCASES[showcase]
    folder = output / f"run{index}"
    base, rl_seed = f"{spec['base']}?seed={index}", 100 + index
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    command = [
        sys.executable, "-m", "r1_lightning.cli", "fit", "--config", str(spec["config"]),
        "--seed_everything", str(rl_seed), "--model.init_args.model", base,
        "--trainer.logger.init_args.save_dir", str(folder), "--trainer.default_root_dir", str(folder),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    started = time.perf_counter()
    with open(output / f"run{index}.log", "w") as log:
        subprocess.run(command, env=env, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return {**collect(showcase, index, folder), "minutes": (time.perf_counter() - started) / 60}


def metric_rows(folder: Path) -> dict[int, dict[str, float]]:
    """Every logged metric of a run, by step, from the ``metrics.csv`` files under ``folder``."""
    rows: dict[int, dict[str, float]] = {}
    for path in folder.glob("**/metrics.csv"):
        for row in csv.DictReader(path.open()):
            rows.setdefault(int(row["step"]), {}).update({k: float(v) for k, v in row.items() if v and "/" in k})
    return rows


def collect(showcase: str, index: int, folder: Path) -> dict:
    """A run's first and last evaluation, read from its ``metrics.csv`` (``--collect`` reads finished or
    stopped runs this way without running them again)."""
    spec = SHOWCASES[showcase]
    rows = metric_rows(folder)
    evals = sorted(step for step, row in rows.items() if "val/pass@1" in row)
    return {
        "run": index,
        "base": f"{spec['base']}?seed={index}",
        "rl_seed": 100 + index,
        "first": {key: rows[evals[0]].get(key) for key in spec["keys"]},
        "last": {key: rows[evals[-1]].get(key) for key in spec["keys"]},
        "last_step": evals[-1],
    }


def holds(showcase: str, result: dict, min_gain: float) -> bool:
    """The showcase's claim, for one run (see the module docstring)."""
    first, last = result["first"], result["last"]
    if showcase == "reasoning":
        return (
            last["val/pass@1"] - first["val/pass@1"] >= min_gain
            and last["val/completion_length"] > first["val/completion_length"]
        )
    return (
        last["val/pass@1/difficulty_3"] - first["val/pass@1/difficulty_3"] >= min_gain
        and last["val/tool_use_rate"] > first["val/tool_use_rate"]
    )


def table(showcase: str, results: list[dict]) -> str:
    keys = SHOWCASES[showcase]["keys"]
    lines = ["| run (base seed / RL seed) | " + " | ".join(keys) + " | holds |", "|---" * (len(keys) + 2) + "|"]
    for r in results:
        cells = [f"{_fmt(r['first'].get(k))} -> {_fmt(r['last'].get(k))}" for k in keys]
        lines.append(f"| {r['run']} ({r['run']} / {r['rl_seed']}) | " + " | ".join(cells) + f" | {r['holds']} |")
    gains = {k: [r["last"][k] - r["first"][k] for r in results if r["last"].get(k) is not None] for k in keys}
    spread = [f"{statistics.mean(v):+.3f} ± {statistics.pstdev(v):.3f}" if v else "" for v in gains.values()]
    held = f"{sum(r['holds'] for r in results)}/{len(results)}"
    lines.append("| change, mean ± sd | " + " | ".join(spread) + f" | {held} |")
    return "\n".join(lines)


def plot(showcase: str, folders: list[Path], path: Path) -> None:
    """Every run's curves of the showcase's first three keys (held-out evaluations) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = SHOWCASES[showcase]["keys"][:3]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
    for index, folder in enumerate(folders):
        rows = metric_rows(folder)
        for axis, key in zip(axes, keys, strict=True):
            steps = sorted(step for step, row in rows.items() if key in row)
            axis.plot(steps, [rows[step][key] for step in steps], marker="o", label=f"run {index}")
    for axis, key in zip(axes, keys, strict=True):
        axis.set_title(key, fontsize=10)
        axis.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("showcase", choices=sorted(SHOWCASES))
    parser.add_argument("--runs", type=int, default=5, help="runs 0..N-1, each with its own base and RL seed")
    parser.add_argument("--first", type=int, default=0, help="index of the first run")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (threads split between them)")
    parser.add_argument("--min-gain", type=float, default=None, help="default: 0.05 reasoning, 0.30 tools (issue 26)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--collect", action="store_true", help="only read the runs already in --output")
    parser.add_argument("--plot", type=Path, default=None, help="also draw every run's curves into this PNG")
    args = parser.parse_args()
    output = args.output or Path("runs") / f"bench-{args.showcase}-seeds"
    output.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    indices = range(args.first, args.first + args.runs)
    if args.collect:
        results = [collect(args.showcase, i, output / f"run{i}") for i in indices]
    else:
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda i: run(args.showcase, i, output, threads), indices))
    min_gain = args.min_gain if args.min_gain is not None else {"reasoning": 0.05, "tools": 0.30}[args.showcase]
    for result in results:
        result["holds"] = holds(args.showcase, result, min_gain)
        print(json.dumps(result), flush=True)
    print(table(args.showcase, results))
    path = args.json or ROOT / "benchmarks" / "results" / f"{args.showcase}-seeds-cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"min_gain": min_gain, "runs": results}, indent=2) + "\n")
    if args.plot:
        plot(args.showcase, [output / f"run{i}" for i in indices], args.plot)


if __name__ == "__main__":
    main()
