"""Soak: the embedded default (configs/r1_zero_tiny.yaml) for many steps; memory must stay flat.

    python benchmarks/soak.py --steps 1000

Runs ``r1-lightning fit`` in this process with the shipped config (checkpoints every 20 steps,
validation every 250), records the process's resident memory (current and peak) every 50 steps, and
prints peak memory at step 100 and at the last step with their ratio (target: <= 1.10, i.e. flat within
10%). Writes benchmarks/results/soak-<steps>.json. Not a test: it takes ~10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402


def rss_mb() -> float:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class MemoryProbe(L.Callback):
    def __init__(self, every: int = 50) -> None:
        self.every, self.samples, self.started = every, [], time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 1 or step % self.every == 0:
            self.samples.append(
                {"step": step, "rss_mb": rss_mb(), "peak_mb": peak_mb(), "seconds": time.perf_counter() - self.started}
            )
            print(
                f"soak step {step}: rss {self.samples[-1]['rss_mb']:.0f} MB, peak {self.samples[-1]['peak_mb']:.0f} MB",
                flush=True,
            )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from r1_lightning.cli.main import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/r1_zero_tiny.yaml"),
                "--trainer.max_steps",
                str(args.steps),
                "--trainer.val_check_interval",
                "250",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.logger.init_args.save_dir",
                tmp,
                "--trainer.default_root_dir",
                tmp,
                "--model.init_args.export_dir",
                f"{tmp}/hf",
                "--trainer.callbacks+=benchmarks.soak.MemoryProbe",
            ]
        )
    probe = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "MemoryProbe")
    by_step = {s["step"]: s for s in probe.samples}
    first, last = by_step.get(100, probe.samples[0]), probe.samples[-1]
    result = {
        "steps": cli.trainer.global_step,
        "samples": probe.samples,
        "peak_mb_at_100": first["peak_mb"],
        "peak_mb_at_end": last["peak_mb"],
        "rss_mb_at_100": first["rss_mb"],
        "rss_mb_at_end": last["rss_mb"],
        "peak_ratio": last["peak_mb"] / first["peak_mb"],
        "seconds": last["seconds"],
    }
    print(
        f"peak memory: {first['peak_mb']:.0f} MB at step {first['step']}, {last['peak_mb']:.0f} MB at step "
        f"{last['step']} (ratio {result['peak_ratio']:.3f}; target <= 1.10); current RSS {first['rss_mb']:.0f} -> "
        f"{last['rss_mb']:.0f} MB; {last['seconds']:.0f} s"
    )
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"soak-{args.steps}.json")
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
