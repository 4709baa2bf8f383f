"""The lean decode step computes what the transformers forward computes, and falls back where it cannot."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config, Qwen3Config

from r1_lightning.generation.lean_decode import LeanDecoder, unsupported_reason
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.sampler import TorchGenerator
from r1_lightning.hf_compat import returned_cache
from r1_lightning.tiny.base import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tokenizer()
    tok.padding_side = "left"
    return tok


def _model(config_class, tokenizer, **extra):
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


ARCHITECTURES = {
    "qwen2": (Qwen2Config, {}),  # q/k/v biases, grouped-query heads
    "llama": (LlamaConfig, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),  # no biases, scaled RoPE
    "qwen3": (Qwen3Config, {"head_dim": 16}),  # per-head q/k RMSNorm
}
PROMPTS = ["1 + 2 =", "a much longer prompt: 12 + 7 * 3 ="]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_step_logits_equal_the_transformers_forward(arch, tokenizer):
    """Teacher-forced: prefill the (left-padded) prompts, step through fixed tokens, compare every step's
    logits with one full forward over prompt + tokens, for rows that share a prefilled prompt (groups)."""
    config_class, extra = ARCHITECTURES[arch]
    model = _model(config_class, tokenizer, **extra)
    group, steps = 2, 5
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    rows_mask, rows_pos = mask.repeat_interleave(group, 0), positions.repeat_interleave(group, 0)
    decoder = LeanDecoder(model, returned_cache(out), rows_mask, rows_pos, max_new_tokens=steps, repeats=group)
    torch.manual_seed(1)
    tokens = torch.randint(5, len(tokenizer), (len(PROMPTS) * group, steps))
    lean = torch.stack([decoder.step(tokens[:, t]) for t in range(steps)], dim=1)
    full_ids = torch.cat([ids.repeat_interleave(group, 0), tokens], dim=1)
    full_mask = torch.cat([rows_mask, torch.ones_like(tokens)], dim=1)
    with torch.no_grad():
        reference = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)
        ).logits[:, ids.shape[1] :]
    torch.testing.assert_close(lean, reference, atol=2e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="max_new_tokens"):
        decoder.step(tokens[:, 0])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("group_size", [1, 3])
def test_engines_sample_the_same_completions(arch, group_size, tokenizer):
    """Same seed, same tokens: greedy and sampled (T=1, top-k, top-p), with and without a shared prefix."""
    config_class, extra = ARCHITECTURES[arch]
    model = _model(config_class, tokenizer, **extra)
    prompts = [p for p in PROMPTS for _ in range(group_size)]
    for sampling in (
        SamplingConfig(temperature=0, max_new_tokens=12),
        SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=12),
    ):
        results = {}
        for engine in ("hf", "lean"):
            torch.manual_seed(3)
            results[engine] = TorchGenerator(tokenizer, engine=engine).generate(model, prompts, sampling, group_size)
        hf, lean = results["hf"], results["lean"]
        assert torch.equal(hf.input_ids, lean.input_ids)
        assert torch.equal(hf.completion_mask, lean.completion_mask) and hf.texts == lean.texts


def test_lora_adapters_are_applied(tokenizer):
    """A peft model decodes through its adapters (and without them when they are disabled)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _model(Qwen2Config, tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"])
    )
    with torch.no_grad():  # non-zero adapters, so that enabling them changes the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    sampling = SamplingConfig(temperature=0, max_new_tokens=10)
    outputs = []
    for context in (torch.no_grad, model.disable_adapter):
        with context():
            hf = TorchGenerator(tokenizer, engine="hf").generate(model, PROMPTS, sampling)
            lean = TorchGenerator(tokenizer, engine="lean").generate(model, PROMPTS, sampling)
        assert torch.equal(hf.input_ids, lean.input_ids)
        outputs.append(lean.input_ids)
    assert not torch.equal(*outputs)  # the adapters did change what was decoded


def test_unsupported_models_fall_back_or_fail_clearly(tokenizer):
    gpt2 = AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, eos_token_id=tokenizer.eos_token_id)
    ).eval()
    assert "model_type 'gpt2'" in unsupported_reason(gpt2, 16)
    sampling = SamplingConfig(temperature=0, max_new_tokens=4)
    auto = TorchGenerator(tokenizer).generate(gpt2, PROMPTS, sampling)  # auto: falls back to the forward
    assert auto.completion_mask.shape == (2, auto.input_ids.shape[1] - auto.prompt_length)
    with pytest.raises(ValueError, match="rollout_engine 'lean' cannot decode this model: model_type 'gpt2'"):
        TorchGenerator(tokenizer, engine="lean").generate(gpt2, PROMPTS, sampling)
    windowed = _model(Qwen2Config, tokenizer, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    assert "sliding window 8 < sequence length 40" in unsupported_reason(windowed, 40)
    assert unsupported_reason(windowed, 8) is None
    with pytest.raises(ValueError, match="rollout engine must be one of"):
        TorchGenerator(tokenizer, engine="vllm-typo")
    partitioned = _model(Qwen2Config, tokenizer)
    partitioned.model.norm.weight.ds_id = 0  # how DeepSpeed ZeRO-3 marks its partitioned parameters
    assert "DeepSpeed ZeRO-3" in unsupported_reason(partitioned, 8)  # (FSDP2: tests/test_fsdp.py)


def test_finished_rows_leave_the_batch_without_changing_any_completion(tokenizer):
    """Rows that finish early are dropped from the lean decoder's batch; every completion is unchanged."""
    model = _model(Qwen2Config, tokenizer)
    prompts = [p for p in PROMPTS for _ in range(8)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=24, stop_strings=("e",))  # a frequent stop
    results = {}
    for engine in ("hf", "lean"):
        torch.manual_seed(5)
        results[engine] = TorchGenerator(tokenizer, engine=engine).generate(model, prompts, sampling, group_size=8)
    lengths = results["lean"].completion_mask.sum(1)
    assert lengths.min() < lengths.max() // 2 and (~results["lean"].truncated).sum() >= 4  # rows did finish early
    assert torch.equal(results["hf"].input_ids, results["lean"].input_ids)
    assert torch.equal(results["hf"].completion_mask, results["lean"].completion_mask)


def test_drop_finished_compacts_caches_once_enough_rows_are_done(tokenizer):
    model = _model(Qwen2Config, tokenizer)
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    decoder = LeanDecoder(
        model,
        returned_cache(out),
        mask.repeat_interleave(4, 0),
        positions.repeat_interleave(4, 0),
        max_new_tokens=4,
        repeats=4,
    )
    finished = torch.zeros(8, dtype=torch.bool)
    finished[3] = True
    decoder.drop_finished(finished, min_fraction=0.25)  # 1 of 8 done: below the threshold, nothing moves
    assert decoder.rows is None and decoder.keys[0].shape[0] == 8
    finished[[0, 6]] = True
    decoder.drop_finished(finished, min_fraction=0.25)
    assert decoder.rows.tolist() == [1, 2, 4, 5, 7] and decoder.keys[0].shape[0] == 5
    assert decoder.position.shape == (5,) and decoder.mask_bias.shape[0] == 5
    assert decoder.step(torch.tensor([5, 6, 7, 8, 9])).shape == (5, len(tokenizer))
