"""GPU-only paths (bf16, FSDP2 on CUDA, bitsandbytes on CUDA); skipped cleanly without CUDA."""

from pathlib import Path

import pytest
import torch
from helpers import NO_EVAL

from r1_lightning.cli.main import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
ROOT = Path(__file__).resolve().parents[1]


def _gpu_run(tmp_path, *extra):
    from helpers import fast_args as _fast

    return main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.accelerator",
                "gpu",
                "--trainer.devices",
                "1",
                "--model.init_args.rewards",
                "{helpers.rewards.varied_reward: 1.0}",
                *extra,
            ),
        ]
    )


def test_bf16_mixed_fast_dev_run_on_gpu(tmp_path):
    cli = _gpu_run(tmp_path, "--trainer.fast_dev_run", "1", "--trainer.precision", "bf16-mixed")
    assert cli.trainer.global_step == 1
    assert cli.trainer.strategy.root_device.type == "cuda"  # (Lightning moves the model back to CPU at the end)


def test_bf16_weights_generate_and_score(tmp_path):
    from r1_lightning.generation.rollout import SamplingConfig
    from r1_lightning.generation.sampler import TorchGenerator
    from r1_lightning.models.loading import load_policy

    model, tokenizer = load_policy("tiny:random", dtype="bfloat16")
    model.cuda()
    gen = TorchGenerator(tokenizer).generate(model, ["1 + 1"] * 4, SamplingConfig(max_new_tokens=8), group_size=4)
    assert gen.input_ids.is_cuda and len(gen.texts) == 4


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_fsdp2_trains_evaluates_exports_and_checkpoints_on_gpu(tmp_path, beta):
    """FSDP2 in bf16-mixed on one GPU (tests/test_fsdp.py covers two CPU ranks against DDP)."""
    cli = _gpu_run(
        tmp_path,
        "--config",
        str(ROOT / "configs" / "strategy" / "fsdp.yaml"),
        "--trainer.devices",
        "1",
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--model.init_args.beta",
        str(beta),
        "--model.init_args.val_num_samples",
        "2",
        "--data.init_args.source.init_args.val_size",
        "4",
        "--model.init_args.export_dir",
        str(tmp_path / "hf"),
    )
    assert cli.trainer.global_step == 2
    assert type(cli.trainer.strategy).__name__ == "FSDP2Strategy"
    assert len(cli.model.eval_history) >= 2  # evaluation (sampling) ran before and after training
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for _, m in cli.model.eval_history)
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_qlora_4bit_on_gpu(tmp_path):
    cli = _gpu_run(
        tmp_path,
        "--trainer.max_steps",
        "2",
        *NO_EVAL,
        "--model.init_args.lora",
        "{r: 8, alpha: 16}",
        "--model.init_args.quantization",
        "4bit",
        "--model.init_args.dtype",
        "bfloat16",
        "--model.init_args.optimizer",
        "paged_adamw_8bit",
    )
    assert cli.trainer.global_step == 2
    assert any("Linear4bit" in type(m).__name__ for m in cli.model.policy.modules())


def test_8bit_reference_and_8bit_optimizer_on_gpu(tmp_path):
    cli = _gpu_run(
        tmp_path,
        "--trainer.max_steps",
        "2",
        *NO_EVAL,
        "--model.init_args.reference_quantization",
        "8bit",
        "--model.init_args.optimizer",
        "adamw_8bit",
        "--trainer.precision",
        "bf16-mixed",
    )
    assert cli.trainer.global_step == 2
    assert any("Linear8bitLt" in type(m).__name__ for m in cli.model.reference.modules())


def test_shared_prefix_in_bf16_matches_the_full_forward():
    from r1_lightning.generation.forward import completion_logprobs, shared_prefix_logprobs
    from r1_lightning.generation.rollout import SamplingConfig
    from r1_lightning.generation.sampler import TorchGenerator
    from r1_lightning.models.loading import load_policy

    model, tokenizer = load_policy("tiny:random", dtype="bfloat16")
    model.cuda()
    prompts = [p for p in ["1 + 2", "a longer prompt: 12 + 7"] for _ in range(4)]
    gen = TorchGenerator(tokenizer).generate(model, prompts, SamplingConfig(max_new_tokens=8), group_size=4)
    with torch.no_grad():
        full = completion_logprobs(model, gen.input_ids, gen.attention_mask, gen.prompt_length)[0]
        groups = torch.arange(8, device="cuda") // 4
        shared = shared_prefix_logprobs(model, gen.input_ids, gen.attention_mask, gen.prompt_length, groups)[0]
    with torch.no_grad():
        positions = (gen.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=gen.input_ids, attention_mask=gen.attention_mask, position_ids=positions).logits
    mask = gen.completion_mask.bool()
    # The log-probs are computed in float32 from bf16 logits, so the two paths differ by the bf16 rounding
    # of the logits they feed in (different kernels round differently): a few units in the last place of
    # the largest logit, 2^-7 relative for bf16's 8-bit significand. (The float32 paths agree to 1e-5:
    # tests/test_memory.py; structural bugs are caught there.)
    ulp = 2.0**-7 * max(1.0, logits.float().abs().max().item())
    assert (full[mask] - shared[mask]).abs().max() <= 4 * ulp


def test_cuda_graph_decode_replays_the_lean_step():
    """``rollout_engine: cuda_graph`` on CUDA: captured graphs, one per width bucket, give the lean step's
    logits at every step, and the sampler draws the same completions through either engine."""
    from r1_lightning.generation.graph_decode import GraphedLeanDecoder
    from r1_lightning.generation.lean_decode import LeanDecoder
    from r1_lightning.generation.rollout import SamplingConfig
    from r1_lightning.generation.sampler import TorchGenerator
    from r1_lightning.hf_compat import returned_cache
    from r1_lightning.models.loading import load_policy

    model, tokenizer = load_policy("tiny:random")
    model.cuda().eval()
    encoded = tokenizer(["1 + 2 =", "a longer prompt: 12 + 7 ="], return_tensors="pt", padding=True).to("cuda")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def lean_decoders(count):
        made = []
        for _ in range(count):
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            made.append(LeanDecoder(model, returned_cache(out), mask, positions, max_new_tokens=20))
        return made

    lean, to_capture = lean_decoders(2)
    graphed = GraphedLeanDecoder(to_capture, bucket=8)
    assert graphed.capture
    tokens = torch.randint(5, len(tokenizer), (2, 20), device="cuda")
    for t in range(20):
        torch.testing.assert_close(graphed.step(tokens[:, t]), lean.step(tokens[:, t]), atol=1e-4, rtol=1e-4)
    assert len(graphed.graphs) >= 3
    # under autocast (bf16-mixed training): captured without autocast's weight cache, replays equal eager steps
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first, second = lean_decoders(2)
        eager, captured = GraphedLeanDecoder(first, bucket=8, capture=False), GraphedLeanDecoder(second, bucket=8)
        for t in range(20):
            torch.testing.assert_close(captured.step(tokens[:, t]), eager.step(tokens[:, t]), atol=1e-2, rtol=1e-2)
    sampling = SamplingConfig(temperature=0, max_new_tokens=16)
    prompts = ["1 + 2 ="] * 4 + ["a longer prompt: 12 + 7 ="] * 4
    lean_ids, graph_ids = (
        TorchGenerator(tokenizer, engine=engine).generate(model, prompts, sampling, group_size=4).input_ids
        for engine in ("lean", "cuda_graph")
    )
    assert torch.equal(lean_ids, graph_ids)
