"""The memory estimate printed before the first rollout: its terms by hand, a run that cannot fit refused in
one line before any compute, and the estimate within 25% of the measured peak at two shapes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import NO_EVAL

from r1_lightning.errors import ConfigError
from r1_lightning.training import memory_plan
from r1_lightning.training.memory_plan import estimate_memory

ROOT = Path(__file__).resolve().parents[1]


def _model(hidden=64, layers=2, heads=4, kv_heads=2, inter=96, vocab=100):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config)


def test_terms_by_hand():
    policy, reference = _model(), _model()
    params = sum(p.numel() for p in policy.parameters())
    estimate = estimate_memory(policy, reference, "adamw", 8, 10, 6, 4, None, 16, runtime=1000)
    assert estimate.weights == 2 * 4 * params and estimate.gradients == 4 * params
    assert estimate.optimizer == 2 * 4 * params  # AdamW's two fp32 moments
    # 8 rows x 16 positions x 2 layers x (keys + values) x kv width 2 x 16 x 4 bytes
    assert estimate.kv_cache == 8 * 16 * 2 * 2 * 32 * 4
    # 4 rows x 16 tokens x (2 layers x (8*64 + 4*96 + 2*32 + 4) + 2*64) floats, plus a 16 x 100 logits block x 3
    per_token = 2 * (8 * 64 + 4 * 96 + 2 * 32 + 4) + 2 * 64
    assert estimate.activations == 4 * 16 * per_token * 4 + 3 * 4 * 16 * 100
    # shared prompts: a group of 4 runs its 10 prompt tokens once
    shared = estimate_memory(policy, reference, "adamw", 8, 10, 6, 4, 4, 16, runtime=1000)
    assert shared.activations == (10 + 4 * 6) * per_token * 4 + 3 * 4 * 16 * 100
    # on a CPU both phases stay resident; 8-bit moments; checkpointing keeps one layer's activations
    held = 1000 + estimate.weights + estimate.gradients + estimate.optimizer
    assert estimate.peak == held + estimate.kv_cache + estimate.activations
    assert estimate_memory(policy, None, "adamw_8bit", 8, 10, 6, 4, None, 16, 0).optimizer == 2 * params
    lean = estimate_memory(policy, None, "adamw", 8, 10, 6, 4, None, 16, 0, checkpointing=True)
    assert lean.activations < estimate.activations
    # token-tiled MLPs: the 4 x 96 MLP floats per token and layer go, one 8-token tile's come back
    tiled = estimate_memory(policy, reference, "adamw", 8, 10, 6, 4, None, 16, 1000, mlp_tile_tokens=8)
    assert estimate.activations - tiled.activations == (4 * 16 * 2 - 8) * 4 * 96 * 4
    untiled = estimate_memory(policy, reference, "adamw", 8, 10, 6, 4, None, 16, 1000, mlp_tile_tokens=64)
    assert untiled.activations == estimate.activations  # 64 tokens in one tile: nothing is tiled
    # the automatic threshold (models/tiled_mlp.resolve_mlp_tiling): tiled only above it, 64 tokens here
    args = (policy, reference, "adamw", 8, 10, 6, 4, None, 16, 1000)
    assert estimate_memory(*args, mlp_tile_tokens=8, mlp_tile_above=64).activations == estimate.activations
    assert estimate_memory(*args, mlp_tile_tokens=8, mlp_tile_above=63).activations == tiled.activations


def test_a_run_above_the_machine_is_refused_in_one_line_before_sampling(monkeypatch, tiny_model_and_tokenizer):
    from r1_lightning.training.grpo import GRPOModule

    module = GRPOModule(model="tiny:random", num_generations=2, beta=0.0)
    monkeypatch.setattr(memory_plan, "device_memory", lambda device: 1024**2)  # a 1 MiB machine
    sampled = []
    monkeypatch.setattr(module.generator, "generate", lambda *args, **kwargs: sampled.append(1))
    with pytest.raises(ConfigError, match=r"memory estimate: peak .* GiB of 0.0 GiB .*above this device's memory"):
        module.generate(["1 + 2", "1 + 2"], module.sampling, group_size=2)
    assert sampled == []  # nothing was sampled


def _measured(tmp_path: Path, *extra: str) -> tuple[float, float]:
    """(estimated peak, measured peak resident memory) in GiB of a 2-step run of the shipped tiny config."""
    args = ["fit", "--config", str(ROOT / "configs" / "r1_zero_tiny.yaml"), *NO_EVAL]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    args += ["--model.init_args.export_dir", str(tmp_path / "hf"), "--trainer.max_steps", "2"]
    args += ["--trainer.limit_val_batches", "0", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "helpers.memory_probe", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    estimate = float(re.search(r"memory estimate: peak ([0-9.]+) GiB", output).group(1))
    measured = int(re.search(r"PEAK_RSS_BYTES (\d+)", output).group(1)) / 1024**3
    return estimate, measured


@pytest.mark.slow
def test_the_estimate_is_within_a_quarter_of_the_measured_peak_at_two_shapes(tmp_path):
    from r1_lightning.tiny.base import build_model, build_tokenizer

    # the shipped default's shape (runtime dominates) ...
    small = _measured(tmp_path / "small", "--model.init_args.model", "tiny:random")
    # ... and a wider model with longer completions, where KV cache and activations are most of it
    tokenizer = build_tokenizer()
    wide = tmp_path / "wide_model"
    build_model(tokenizer, hidden_size=768, layers=2, heads=12).save_pretrained(wide)
    tokenizer.save_pretrained(wide)
    large = _measured(
        tmp_path / "large",
        "--model.init_args.model",
        str(wide),
        "--data.init_args.batch_size",
        "4",
        "--model.init_args.sampling.max_new_tokens",
        "128",
        "--model.init_args.sampling.stop_strings",
        "[]",
    )
    for estimate, measured in (small, large):
        assert 0.75 <= estimate / measured <= 1.25, (small, large)
    assert large[1] > small[1] + 0.5  # the two shapes differ where the model's terms count


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_estimate_counts_device_memory_only(tiny_model_and_tokenizer):
    model = _model().cuda()
    estimate = estimate_memory(model, None, "adamw", 8, 10, 6, 4, None, 16, runtime=0)
    assert estimate.peak == estimate.weights + estimate.gradients + estimate.optimizer + max(
        estimate.kv_cache, estimate.activations
    )


def test_releasing_the_freed_heap_is_harmless_and_works_on_glibc():
    """The call before each optimizer step: on Linux (glibc) it runs; tensors stay intact."""
    import sys

    from r1_lightning.training.memory_plan import release_freed_heap

    kept = torch.arange(1000.0)
    freed = [torch.ones(1000) for _ in range(1000)]
    del freed
    released = release_freed_heap()
    assert released or not sys.platform.startswith("linux")
    assert torch.equal(kept, torch.arange(1000.0))
