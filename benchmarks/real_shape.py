"""GRPO at research shapes: Qwen2.5-0.5B's widths and 151,936-token vocabulary, long completions; r1-lightning
against TRL's GRPOTrainer at equal settings, peak memory and seconds per step, measured in one run.

    pip install -e '.[bench]'                 # adds trl
    python benchmarks/real_shape.py           # the two targets (about 30 minutes on 2 CPU cores)
    python benchmarks/real_shape.py --grid    # layers {2, 4} x new tokens {256, 1024, 4096} (hours on CPU)
    python benchmarks/real_shape.py --grid --grid_batch 4 1 4   # the grid at G 4 x 1 prompt (about an hour)
    python benchmarks/real_shape.py --target 1 --floor   # plus the step's GEMM floor (the issue's <= 1.5x)
    python benchmarks/real_shape.py --device cuda --dtype bfloat16 --layers 24 --tokens 1024 4096  # a GPU
    ... --rollout_engine cuda_graph        # (or vllm) r1-lightning's decode steps as CUDA graphs (or vLLM)

The model is random-init Qwen2 with Qwen2.5-0.5B's widths (hidden 896, MLP 4864, 14/2 heads, tied
embeddings, vocabulary 151,936) and ``--layers`` decoder layers; random weights rarely sample EOS, so every
completion runs to the length limit and both frameworks generate the same tokens. Settings shared by both:
G completions x P prompts per step, micro-batches of M completions per forward/backward (TRL: per-device
batch M, gradient accumulation G*P/M, so one generation batch per step), beta 0.04 with a frozen reference,
the per-sequence loss, AdamW, temperature 1, no gradient checkpointing, fp32 on CPU.

Each (framework, setting) runs in a fresh child process, so each peak resident memory (``VmHWM``) is its
own; a child that passes ``--max_rss_gb`` is stopped and reported as out of memory (the machine is not).
Seconds per step: the median after the first (warm-up) step; with ``--steps 1``, the single step.
r1-lightning runs with its defaults (chunked head, fused head+loss, MLPs tiled where their intermediates pass
256 MiB a layer); it is also run with ``logprob_chunk_size 0`` (full logits, the path before chunking) where
``--unchunked`` asks, with ``mlp_tile_tokens 0`` where ``--untiled_mlp`` asks, with tiles of N where
``--mlp_tile_tokens N`` asks. Writes ``benchmarks/results/real-shape-<device>.json``, a Markdown table and a plot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [  # (layers, new tokens, G, prompts, micro-batch, steps): the two targets
    (2, 256, 8, 2, 4, 3),
    (1, 4096, 4, 1, 4, 1),
]


def peak_rss_gb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def child(spec: dict) -> None:
    """One run in this process; prints ``RESULT <json>`` with step times and the peak resident memory."""
    import warnings

    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks import grpo_vs_trl as bench

    warnings.filterwarnings("ignore")
    if spec["device"] == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    setting = bench.Setting(
        spec["group_size"],
        spec["tokens"],
        spec["prompts"],
        spec["steps"] + (1 if spec["steps"] > 1 else 0),  # +1: the warm-up step is dropped
        spec["device"],
        spec["dtype"],
        micro_batch=spec["micro_batch"],
        logprob_chunk_size=spec.get("chunk"),
        mlp_tile_tokens=spec.get("mlp_tile_tokens"),  # None: the module's default (auto)
        rollout_engine=spec.get("rollout_engine", "auto"),
    )
    if spec["framework"] == "floor":  # the step's matrix products alone (benchmarks/gemm_floor.py)
        floor = bench.floor_result(Path(spec["model"]), bench.make_prompts(spec["prompts"]), setting)
        print("RESULT " + json.dumps({"seconds_per_step": floor.seconds_per_step, "peak_rss_gb": peak_rss_gb()}))
        return
    steps: list[float] = []
    summarise = bench._summarise
    bench._summarise = lambda name, s, step_seconds, gen, tokens: steps.extend(step_seconds)  # keep all steps
    prompts = bench.make_prompts(spec["prompts"] * setting.steps + 1)  # (+1: FileSource holds one out for validation)
    runner = bench.run_ours if spec["framework"] == "ours" else bench.run_trl
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        runner(Path(spec["model"]), prompts, setting, Path(tmp))
    bench._summarise = summarise
    measured = steps[1:] if len(steps) > 1 else steps
    cuda_peak = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None
    result = {"seconds_per_step": statistics.median(measured), "steps": steps, "peak_rss_gb": peak_rss_gb()}
    result["cuda_peak_gb"] = cuda_peak
    print("RESULT " + json.dumps(result), flush=True)


def run_child(spec: dict, max_rss_gb: float) -> dict:
    """``spec`` in a child process, stopped if its resident memory passes ``max_rss_gb``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    killed = threading.Event()

    def watch() -> None:
        while process.poll() is None:
            with contextlib.suppress(OSError):
                if peak_rss_gb(process.pid) > max_rss_gb:
                    killed.set()
                    process.kill()
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    started = time.perf_counter()
    output, _ = process.communicate()
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if killed.is_set():
        return {"status": f"out of memory (> {max_rss_gb:g} GiB resident)", "wall_s": time.perf_counter() - started}
    if process.returncode != 0 or not lines:
        return {"status": f"failed (exit {process.returncode})", "wall_s": time.perf_counter() - started}
    return {"status": "ok", **json.loads(lines[-1][7:]), "wall_s": time.perf_counter() - started}


def _cell(r: dict, key: str) -> str:
    return f"{r[key]:.1f}" if r["status"] == "ok" else r["status"]


def _ratio(ours: dict, trl: dict, key: str) -> str:
    return f"{ours[key] / trl[key]:.2f}x" if ours["status"] == trl["status"] == "ok" else "n/a"


def table(rows: list[dict]) -> str:
    header = "| layers | new tokens | G x prompts, micro-batch | r1-lightning s/step | TRL s/step | time ratio "
    header += "| r1-lightning peak GiB | TRL peak GiB | memory ratio |"
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        ours, trl = row["ours"], row["trl"]
        lines.append(
            f"| {row['layers']} | {row['tokens']} | {row['group_size']} x {row['prompts']}, {row['micro_batch']} "
            f"| {_cell(ours, 'seconds_per_step')} | {_cell(trl, 'seconds_per_step')} "
            f"| {_ratio(ours, trl, 'seconds_per_step')} | {_cell(ours, 'peak_rss_gb')} | {_cell(trl, 'peak_rss_gb')} "
            f"| {_ratio(ours, trl, 'peak_rss_gb')} |"
        )
    floors = [row for row in rows if row.get("floor", {}).get("status") == "ok" and row["ours"]["status"] == "ok"]
    if floors:
        lines += [
            "",
            "| layers | new tokens | GEMM floor s/step | r1-lightning / floor | TRL / floor |",
            "|---|---|---|---|---|",
        ]
        for row in floors:
            floor, trl = row["floor"]["seconds_per_step"], row["trl"]
            against_trl = f"{trl['seconds_per_step'] / floor:.2f}x" if trl["status"] == "ok" else "n/a"
            lines.append(
                f"| {row['layers']} | {row['tokens']} | {floor:.1f} "
                f"| {row['ours']['seconds_per_step'] / floor:.2f}x | {against_trl} |"
            )
    for key, title in (
        ("ours_full_logits", "full logits (logprob_chunk_size 0)"),
        ("ours_tiled_mlp", "token-tiled MLPs (mlp_tile_tokens)"),
        ("ours_untiled_mlp", "untiled MLPs (mlp_tile_tokens: 0)"),
    ):
        variant = [row for row in rows if key in row]
        if variant:
            lines += [
                "",
                f"| layers | new tokens | r1-lightning, {title}: s/step | time ratio | peak GiB | memory ratio |",
            ]
            lines += ["|---|---|---|---|---|---|"]
            for row in variant:
                r, trl = row[key], row["trl"]
                lines.append(
                    f"| {row['layers']} | {row['tokens']} | {_cell(r, 'seconds_per_step')} "
                    f"| {_ratio(r, trl, 'seconds_per_step')} | {_cell(r, 'peak_rss_gb')} "
                    f"| {_ratio(r, trl, 'peak_rss_gb')} |"
                )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"{r['layers']}L {r['tokens']}t\nG{r['group_size']}x{r['prompts']}" for r in rows]
    for offset, (name, key) in enumerate((("r1-lightning", "ours"), ("TRL", "trl"))):
        xs = [i + (offset - 0.5) * 0.38 for i in range(len(rows))]
        for ax, metric in zip(axes, ("seconds_per_step", "peak_rss_gb"), strict=True):
            values = [r[key].get(metric, 0.0) if r[key]["status"] == "ok" else 0.0 for r in rows]
            ax.bar(xs, values, width=0.38, label=name)
    for ax, title in zip(axes, ("seconds per optimizer step", "peak resident memory (GiB)"), strict=True):
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle("GRPO at Qwen2.5-0.5B widths (151,936-token vocabulary), fp32, random init", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--grid", action="store_true", help="layers {2, 4} x new tokens {256, 1024, 4096}")
    parser.add_argument("--layers", type=int, nargs="+", default=None)
    parser.add_argument("--tokens", type=int, nargs="+", default=None)
    parser.add_argument(
        "--grid_batch",
        type=int,
        nargs=3,
        default=(8, 2, 4),
        metavar=("G", "PROMPTS", "MICRO_BATCH"),
        help="the grid's completions per prompt, prompts per step and completions per micro-batch",
    )
    parser.add_argument("--frameworks", nargs="+", default=["ours", "trl"], choices=["ours", "trl"])
    parser.add_argument("--unchunked", action="store_true", help="also r1-lightning with logprob_chunk_size 0")
    parser.add_argument("--mlp_tile_tokens", type=int, default=0, help="also r1-lightning with tiles of this many")
    parser.add_argument("--untiled_mlp", action="store_true", help="also r1-lightning with mlp_tile_tokens: 0")
    parser.add_argument("--floor", action="store_true", help="also the step's GEMM floor (benchmarks/gemm_floor.py)")
    parser.add_argument("--target", type=int, choices=[1, 2], default=None, help="only this one of the two targets")
    parser.add_argument(
        "--rollout_engine",
        default="auto",
        choices=["auto", "lean", "cuda_graph", "hf", "vllm"],
        help="r1-lightning's decode engine (TRL decodes with transformers' generate whatever this says)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max_rss_gb", type=float, default=20.0)
    parser.add_argument("--out_dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    sys.path.insert(0, str(ROOT))
    from benchmarks.grpo_vs_trl import build_model

    settings = TARGETS if args.target is None else [TARGETS[args.target - 1]]
    if args.grid or args.layers or args.tokens:
        settings = [
            (layers, tokens, *args.grid_batch, 3 if tokens <= 256 else 1)
            for layers in args.layers or [2, 4]
            for tokens in args.tokens or [256, 1024, 4096]
        ]
    rows: list[dict] = []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"real-shape-{args.device.split(':')[0]}.json"
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[int, Path] = {}
        for layers, tokens, group, prompts, micro, steps in settings:
            if layers not in models:
                models[layers] = build_model("qwen2.5-0.5b", Path(tmp) / f"model-{layers}", args.dtype, layers)
            row = dict(layers=layers, tokens=tokens, group_size=group, prompts=prompts, micro_batch=micro)
            spec = dict(row, model=str(models[layers]), steps=steps, device=args.device, dtype=args.dtype)
            spec["rollout_engine"] = row["rollout_engine"] = args.rollout_engine
            variants = [(f, {}) for f in args.frameworks]
            variants += [("ours_full_logits", {"chunk": 0})] if args.unchunked else []
            tiled = {"mlp_tile_tokens": args.mlp_tile_tokens}
            variants += [("ours_tiled_mlp", tiled)] if args.mlp_tile_tokens else []
            variants += [("ours_untiled_mlp", {"mlp_tile_tokens": 0})] if args.untiled_mlp else []
            variants += [("floor", {})] if args.floor else []
            for name, extra in variants:
                framework = {"trl": "trl", "floor": "floor"}.get(name, "ours")  # ours_* variants are ours
                row[name] = run_child({**spec, **extra, "framework": framework}, args.max_rss_gb)
                print(f"{name} {row}", file=sys.stderr, flush=True)
            rows.append(row)
            for key in ("ours", "trl"):
                row.setdefault(key, {"status": "not run"})
            out.write_text(json.dumps(rows, indent=1))  # after every setting: a stopped run keeps what finished
    plot(rows, out.with_suffix(".png"))
    print(table(rows))


if __name__ == "__main__":
    main()
