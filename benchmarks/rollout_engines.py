"""Rollout engines head to head, without trainers: r1-lightning's decode (lean and hf-forward steps) vs
transformers' generate.

    python benchmarks/rollout_engines.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16 \
        --prompts 8 --group_size 8 --max_new_tokens 256 --bandwidth_gb_s 3350

Same saved random-init model, same prompts (each repeated G times), same length, temperature 1. Prints
completion tokens/s of each engine and their ratio, and (with --bandwidth_gb_s) the fraction of the
decode roofline (weights + KV cache streamed once per step). --profile prints the top operators.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth_gb_s", type=float, default=0.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    from r1_lightning.models import load_policy
    from r1_lightning.rollout import HFGenerator, SamplingConfig

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(args.shape, Path(tmp) / "model", args.dtype)
        model, tokenizer = load_policy(str(path), dtype=args.dtype)
        model.to(args.device).eval()
        prompts = [r["prompt"] for r in make_prompts(args.prompts) for _ in range(args.group_size)]
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
        generators = {engine: HFGenerator(tokenizer, engine=engine) for engine in ("lean", "hf")}

        def ours(group_size: int, engine: str = "lean"):
            gen = generators[engine].generate(model, prompts, sampling, group_size=group_size)
            return int(gen.completion_mask.sum())

        def hf():
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(args.device)
            out = model.generate(
                **encoded,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
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
        rates = {}
        for name, fn in engines.items():
            fn()  # warm-up
            tokens = seconds = 0.0
            for _ in range(args.repeats):
                sync()
                started = time.perf_counter()
                tokens += fn()
                sync()
                seconds += time.perf_counter() - started
            rates[name] = tokens / seconds
            print(f"{name:36s} {rates[name]:10.0f} completion tokens/s", flush=True)
        base = rates["transformers generate"]
        for name, rate in rates.items():
            print(f"{name:36s} {rate / base:5.2f}x transformers generate")
        if args.bandwidth_gb_s:
            s = Setting(args.group_size, args.max_new_tokens, args.prompts, 1, args.device, args.dtype)
            bound = bandwidth_bound(path, s, args.bandwidth_gb_s)
            for name, rate in rates.items():
                print(f"{name:36s} {rate / bound:6.1%} of the decode roofline ({bound:.0f} tokens/s)")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
            for name in ("r1-lightning lean, shared prefill", "transformers generate"):
                with profile(activities=activities) as prof:
                    engines[name]()
                    sync()
                print(f"---- {name}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
