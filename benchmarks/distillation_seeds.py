"""R1's distillation table over several seeds: ``configs/pipeline/distill_tiny.yaml`` once per seed.

    python benchmarks/distillation_seeds.py --seeds 0 1 2

Each seed runs the whole pipeline (``r1-lightning pipeline --seed S``: every fit stage's
``seed_everything`` and the rejection sampler's seed; the evaluation keeps its own seed, so every stage of
every run is scored on the same held-out problems and draws) into ``<output>/seed-S``, then reads the
stage records. Prints a Markdown table (each stage's pass@1 per seed, mean ± standard deviation over
seeds, and wall minutes) and each seed's comparison verdicts, and writes ``distillation-seeds.json``.
Not a test: about 2 minutes per seed on 2 CPU cores from a warm cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pipeline" / "distill_tiny.yaml"


def run_seed(seed: int, output: Path) -> tuple[list[dict], float, list[str]]:
    """The pipeline for one seed: its stage records, wall seconds and the report's comparison lines."""
    folder = output / f"seed-{seed}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "r1_lightning.cli", "pipeline", "--config", str(CONFIG)]
    started = time.perf_counter()
    subprocess.run([*command, "--seed", str(seed), "--output_dir", str(folder)], env=env, check=True)
    seconds = time.perf_counter() - started
    records = [json.loads((folder / name / "stage.json").read_text()) for name in stage_names(folder)]
    report = (folder / "report.md").read_text()
    verdicts = [line for line in report.splitlines() if " vs " in line and line.startswith("- ")]
    return records, seconds, verdicts


def stage_names(folder: Path) -> list[str]:
    import yaml

    stages = yaml.safe_load(CONFIG.read_text())["stages"]
    return [stage["name"] for stage in stages if (folder / stage["name"] / "stage.json").exists()]


def table(runs: dict[int, tuple[list[dict], float, list[str]]]) -> str:
    seeds = sorted(runs)
    names = [record["name"] for record in runs[seeds[0]][0]]
    header = ["stage", *(f"pass@1 seed {s}" for s in seeds), "mean ± sd", "minutes (mean)"]
    lines = [f"| {' | '.join(header)} |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name in names:
        records = [next(r for r in runs[s][0] if r["name"] == name) for s in seeds]
        minutes = statistics.mean(r["seconds"] for r in records) / 60
        if records[0]["metrics"] is None:
            lines.append(f"| {name} | {' | '.join('' for _ in seeds)} |  | {minutes:.1f} |")
            continue
        values = [r["metrics"]["pass@1"] for r in records]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = [f"{v:.3f} ± {r['metrics']['pass@1_ci95']:.3f}" for v, r in zip(values, records, strict=True)]
        lines.append(f"| {name} | {' | '.join(cells)} | {statistics.mean(values):.3f} ± {spread:.3f} | {minutes:.1f} |")
    total = statistics.mean(runs[s][1] for s in seeds) / 60
    lines.append(f"| whole pipeline |{' |' * len(seeds)}  | {total:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "distillation_seeds")
    args = parser.parse_args()
    runs = {seed: run_seed(seed, args.output) for seed in args.seeds}
    print("\n" + table(runs) + "\n")
    for seed in sorted(runs):
        print(f"seed {seed}:\n" + "\n".join(runs[seed][2]))
    result = {
        str(seed): {"seconds": runs[seed][1], "stages": runs[seed][0], "comparisons": runs[seed][2]} for seed in runs
    }
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "distillation-seeds.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
