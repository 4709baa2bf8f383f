"""GRPO step time and rollout throughput: r1-lightning vs TRL's GRPOTrainer, in one run, same settings.

    pip install -e '.[bench]'          # adds trl
    python benchmarks/grpo_vs_trl.py                       # CPU: one comparison + sweep, PNG, table
    python benchmarks/grpo_vs_trl.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16 \
        --group_sizes 8 --lengths 256 --prompts_per_step 8  # GPU: Qwen2.5-0.5B's shape, random init

Both frameworks load the *same* saved random-init Qwen2 model and tokenizer, get the same prompts
(R1-Zero template on procedural arithmetic), the same cheap reward (varies within groups, so there is
a gradient), group size,
completion length, batch (prompts x G completions, one optimizer step per rollout, the whole batch in
one forward/backward), temperature 1, beta 0.04 with a frozen reference, the per-sequence ("grpo")
loss and AdamW, and gradient checkpointing set explicitly on both sides (off unless
``--gradient_checkpointing``; TRL's GRPOConfig would default to on, which slows its step).
Random weights rarely sample EOS, so every completion runs to the length limit and
both generate the same number of tokens. The first step of each (warm-up, allocator, kernel choice)
is excluded; the median of the rest is reported.

Metrics: seconds per optimizer step (sampling + reward + reference + forward/backward + update), and
rollout tokens/s (completion tokens generated / seconds spent in generation). Ratios are
r1-lightning / TRL for step time (lower is better) and r1-lightning / TRL for tokens/s (higher is better).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

SHAPES = {
    # a CPU-sized Qwen2 (about 4M parameters with the tiny tokenizer's vocabulary)
    "cpu-small": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=None,
    ),
    # Qwen2.5-0.5B's architecture (494M parameters): the real vocabulary size, so the LM head costs what it does
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        rope_theta=1_000_000.0,
    ),
}


@dataclass
class Setting:
    group_size: int
    max_new_tokens: int
    prompts_per_step: int
    steps: int
    device: str
    dtype: str
    beta: float = 0.04
    lr: float = 1e-6
    rollout_engine: str = "auto"
    gradient_checkpointing: bool = False
    micro_batch: int | None = None  # completions per forward/backward (None: the whole batch at once)
    logprob_chunk_size: int | None = None  # r1-lightning's chunked log-probs (None: auto; 0: full logits)
    mlp_tile_tokens: int | None = None  # r1-lightning's token-tiled MLPs (None: its default, auto; 0: off)


@dataclass
class Result:
    framework: str
    group_size: int
    max_new_tokens: int
    seconds_per_step: float
    rollout_tokens_per_s: float
    generation_fraction: float  # share of the step spent generating


def build_model(shape: str, folder: Path, dtype: str, layers: int | None = None) -> Path:
    """Save a random-init Qwen2 of ``shape`` (``layers`` decoder layers if given) with the tiny offline
    tokenizer to ``folder``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1_lightning.tiny.base import build_tokenizer

    tokenizer = build_tokenizer()
    spec = dict(SHAPES[shape])
    spec["vocab_size"] = spec["vocab_size"] or len(tokenizer)
    spec["num_hidden_layers"] = layers or spec["num_hidden_layers"]
    config = Qwen2Config(
        **spec,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_prompts(count: int) -> list[dict]:
    """Rendered R1-Zero prompts over procedural arithmetic (the same list for both frameworks)."""
    from r1_lightning.data import ArithmeticTask, PromptDataModule

    dm = PromptDataModule(source=ArithmeticTask(), template="r1_zero")
    records = []
    for record in dm.source.iter_train(seed=0, epoch=0):
        records.append({"prompt": dm.render(record)["prompt"], "answer": str(record["answer"])})
        if len(records) == count:
            return records
    raise RuntimeError("arithmetic task ran out of prompts")


def varied_reward(completions, **kwargs):
    """Cheap and different within a group even for random weights, so both frameworks get a gradient."""
    return [(len(set(c)) % 5) / 4 for c in completions]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(model_path: Path, prompts: list[dict], s: Setting, work: Path) -> Result:
    import lightning as L

    from r1_lightning.data import FileSource, PromptDataModule
    from r1_lightning.generation.rollout import SamplingConfig
    from r1_lightning.training.grpo import GRPOModule

    data_file = work / "prompts.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in prompts))
    step_seconds, gen_seconds, gen_tokens = [], [], []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(s.device)
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(s.device)
            step_seconds.append(time.perf_counter() - self.started)
            generation = batch["rollout"].generation
            gen_seconds.append(generation.seconds)
            gen_tokens.append(int(generation.completion_mask.sum()))

    module = GRPOModule(
        model=str(model_path),
        dtype=s.dtype,
        rewards={"benchmarks.grpo_vs_trl.varied_reward": 1.0},
        num_generations=s.group_size,
        rollout_engine=s.rollout_engine,
        gradient_checkpointing=s.gradient_checkpointing,
        beta=s.beta,
        lr=s.lr,
        loss_type="sequence",
        micro_batch_size=s.micro_batch,
        logprob_chunk_size=s.logprob_chunk_size,
        mlp_tile_tokens=s.mlp_tile_tokens,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=s.max_new_tokens),
        validate_at_start=False,
        export_dir=str(work / "ours_hf"),
    )
    module.on_train_end = lambda: None  # no export/evaluation inside the timed loop's teardown
    data = PromptDataModule(
        source=FileSource(str(data_file), val_size=1), template="plain", batch_size=s.prompts_per_step
    )
    trainer = L.Trainer(
        accelerator="gpu" if s.device.startswith("cuda") else "cpu",
        devices=1,
        max_steps=s.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Timer()],
        default_root_dir=str(work),
    )
    trainer.fit(module, datamodule=data)
    return _summarise("r1-lightning", s, step_seconds, gen_seconds, gen_tokens)


def run_trl(model_path: Path, prompts: list[dict], s: Setting, work: Path) -> Result:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    step_seconds, gen_seconds, gen_tokens = [], [], []
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, s.dtype))
    eos = tokenizer.eos_token_id
    plain_generate = model.generate

    def timed_generate(*args, **kwargs):
        _sync(s.device)
        started = time.perf_counter()
        out = plain_generate(*args, **kwargs)
        _sync(s.device)
        gen_seconds.append(time.perf_counter() - started)
        completion = out[:, kwargs["input_ids"].shape[1] :]
        finished = (completion == eos).cumsum(1)
        gen_tokens.append(int(((finished == 0) | ((finished == 1) & (completion == eos))).sum()))
        return out

    model.generate = timed_generate

    class Timer(TrainerCallback):
        # from one optimizer step's end to the next (on_step_begin may fire per accumulation micro-step)
        def on_train_begin(self, args, state, control, **kwargs):
            _sync(s.device)
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(s.device)
            now = time.perf_counter()
            step_seconds.append(now - self.last)
            self.last = now

    completions_per_step = s.prompts_per_step * s.group_size
    micro = s.micro_batch or completions_per_step
    if completions_per_step % micro:
        raise ValueError(f"micro_batch {micro} must divide the {completions_per_step} completions per step")
    config = GRPOConfig(
        output_dir=str(work / "trl"),
        # one generation batch of all completions, trained in micro-batches of `micro` (TRL generates
        # per_device_train_batch_size x steps_per_generation, which defaults to gradient_accumulation_steps)
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions_per_step // micro,
        num_generations=s.group_size,
        max_completion_length=s.max_new_tokens,
        temperature=1.0,
        beta=s.beta,
        learning_rate=s.lr,
        loss_type="grpo",
        max_steps=s.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not s.device.startswith("cuda"),
        bf16=s.dtype == "bfloat16",
        fp16=False,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        lr_scheduler_type="constant",
        warmup_steps=0,
        # explicit: TRL's GRPOConfig defaults to True (recompute activations), r1-lightning to False
        gradient_checkpointing=s.gradient_checkpointing,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[varied_reward],
        args=config,
        train_dataset=datasets.Dataset.from_list(prompts),
        callbacks=[Timer()],
    )
    trainer.train()
    return _summarise("TRL GRPOTrainer", s, step_seconds, gen_seconds, gen_tokens)


def _summarise(name: str, s: Setting, steps: list[float], gen: list[float], tokens: list[int]) -> Result:
    if len(steps) < 2:
        raise RuntimeError(f"{name}: need >= 2 steps to drop the warm-up, got {len(steps)}")
    steps, gen, tokens = steps[1:], gen[1:], tokens[1:]
    return Result(
        framework=name,
        group_size=s.group_size,
        max_new_tokens=s.max_new_tokens,
        seconds_per_step=statistics.median(steps),
        rollout_tokens_per_s=sum(tokens) / sum(gen),
        generation_fraction=sum(gen) / sum(steps),
    )


def floor_result(model_path: Path, prompts: list[dict], s: Setting) -> Result:
    """The step's matrix products alone (:func:`benchmarks.gemm_floor.gemm_floor`) as a Result row."""
    from transformers import AutoConfig, AutoTokenizer

    from benchmarks.gemm_floor import gemm_floor

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt_length = max(len(tokenizer(r["prompt"], add_special_tokens=False).input_ids) for r in prompts)
    parts = gemm_floor(
        AutoConfig.from_pretrained(model_path),
        len(prompts),
        s.group_size,
        prompt_length,
        s.max_new_tokens,
        s.device,
        getattr(torch, s.dtype),
    )
    rollout = parts["prefill"] + parts["decode"]
    return Result(
        framework="GEMM floor",
        group_size=s.group_size,
        max_new_tokens=s.max_new_tokens,
        seconds_per_step=parts["total"],
        rollout_tokens_per_s=len(prompts) * s.group_size * s.max_new_tokens / rollout,
        generation_fraction=rollout / parts["total"],
    )


def bandwidth_bound(model_path: Path, s: Setting, bandwidth_gb_s: float) -> float:
    """Decode tokens/s if every step only had to stream the weights and the KV cache once (batch B*G)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    element = torch.finfo(getattr(torch, s.dtype)).bits // 8
    hidden, layers = config.hidden_size, config.num_hidden_layers
    params = config.vocab_size * hidden + layers * (4 * hidden * hidden + 3 * hidden * config.intermediate_size)
    kv_dim = 2 * layers * config.num_key_value_heads * (hidden // config.num_attention_heads)
    batch = s.prompts_per_step * s.group_size
    mean_context = 150 + s.max_new_tokens / 2  # the R1-Zero prompt is ~150 tokens
    bytes_per_step = element * (params + batch * mean_context * kv_dim)
    return batch * bandwidth_gb_s * 1e9 / bytes_per_step


def plot(results: list[Result], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for framework, marker in (("r1-lightning", "o"), ("TRL GRPOTrainer", "s"), ("GEMM floor", "x")):
        for g in sorted({r.group_size for r in results}):
            rows = sorted(
                (r for r in results if r.framework == framework and r.group_size == g), key=lambda r: r.max_new_tokens
            )
            if not rows:
                continue
            xs = [r.max_new_tokens for r in rows]
            label = f"{framework}, G={g}"
            style = dict(marker=marker, label=label, linestyle=":" if framework == "GEMM floor" else "-")
            axes[0].plot(xs, [r.seconds_per_step for r in rows], **style)
            axes[1].plot(xs, [r.rollout_tokens_per_s for r in rows], **style)
    axes[0].set(xlabel="completion length (tokens)", ylabel="seconds / optimizer step", title="Step time")
    axes[1].set(xlabel="completion length (tokens)", ylabel="completion tokens / s", title="Rollout throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--group_sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is warm-up)")
    parser.add_argument("--frameworks", nargs="+", default=["ours", "trl"], choices=["ours", "trl"])
    parser.add_argument(
        "--bandwidth_gb_s",
        type=float,
        default=0.0,
        help="GPU memory bandwidth for the decode roofline (e.g. 3350 for an H100 SXM)",
    )
    parser.add_argument(
        "--rollout_engine",
        default="auto",
        choices=["auto", "lean", "cuda_graph", "hf", "vllm"],
        help="r1-lightning's decode step (see GRPOModule.rollout_engine)",
    )
    parser.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute activations on both sides (default: off on both; TRL's own default is on)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the step's matrix products alone (benchmarks/gemm_floor.py): the best ratio possible here",
    )
    parser.add_argument("--out_dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_path = build_model(args.shape, work / "model", args.dtype)
        for g in args.group_sizes:
            for length in args.lengths:
                s = Setting(
                    g,
                    length,
                    args.prompts_per_step,
                    args.steps,
                    args.device,
                    args.dtype,
                    rollout_engine=args.rollout_engine,
                    gradient_checkpointing=args.gradient_checkpointing,
                )
                prompts = make_prompts(s.prompts_per_step * s.steps)
                pair = {}
                for framework in args.frameworks:
                    torch.manual_seed(0)
                    runner = run_ours if framework == "ours" else run_trl
                    (work / f"{framework}-{g}-{length}").mkdir(parents=True, exist_ok=True)
                    with contextlib.redirect_stdout(sys.stderr):
                        pair[framework] = runner(model_path, prompts, s, work / f"{framework}-{g}-{length}")
                    results.append(pair[framework])
                line = f"G={g:3d} L={length:4d}"
                for r in pair.values():
                    line += f" | {r.framework}: {r.seconds_per_step:7.3f} s/step {r.rollout_tokens_per_s:9.0f} tok/s"
                if args.floor:
                    pair["floor"] = floor_result(model_path, prompts[: s.prompts_per_step], s)
                    results.append(pair["floor"])
                if "ours" in pair and "trl" in pair:
                    ours, trl = pair["ours"], pair["trl"]
                    line += (
                        f" | step time ratio {ours.seconds_per_step / trl.seconds_per_step:.2f}x,"
                        f" tokens/s ratio {ours.rollout_tokens_per_s / trl.rollout_tokens_per_s:.2f}x"
                    )
                    if "floor" in pair:
                        line += f" | floor / TRL {pair['floor'].seconds_per_step / trl.seconds_per_step:.2f}x"
                if args.bandwidth_gb_s:
                    bound = bandwidth_bound(model_path, s, args.bandwidth_gb_s)
                    line += f" | roofline {bound:.0f} tok/s, ours at {pair['ours'].rollout_tokens_per_s / bound:.1%}"
                print(line, flush=True)
    tag = f"{args.shape}-{args.device.split(':')[0]}"
    (out_dir / f"{tag}.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    if len({(r.group_size, r.max_new_tokens) for r in results}) > 1:
        plot(results, out_dir / f"{tag}.png")
        print(f"plot: {out_dir / f'{tag}.png'}")
    return results


if __name__ == "__main__":
    main()
