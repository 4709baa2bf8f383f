"""R1-style lengths: 8,192 new tokens sample with the lean and the hf engines (the KV cache sized to what the
rollout needs), the trainer scores them by chunks, and a length past the model's positions is refused."""

import pytest
import torch

from r1_lightning.generation.forward import completion_logprobs
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.sampler import TorchGenerator

LONG = 8192


@pytest.fixture(scope="module")
def never_ending():
    """A small random Qwen2 with room for 8k positions whose EOS it can never sample (the EOS id lies past
    its vocabulary), so every completion runs to the limit."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1_lightning.tiny.base import build_tokenizer

    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    tokenizer.add_special_tokens({"eos_token": "<|never|>"})
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=LONG + 256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["lean", "hf"])
def test_8k_new_tokens_sample_and_score(never_ending, engine):
    model, tokenizer = never_ending
    generator = TorchGenerator(tokenizer, engine=engine)
    torch.manual_seed(0)
    gen = generator.generate(model, ["1 + 2", "1 + 2"], SamplingConfig(max_new_tokens=LONG), group_size=2)
    assert gen.completion_mask.shape == (2, LONG) and bool(gen.truncated.all())
    assert int(gen.completion_mask.sum()) == 2 * LONG
    with torch.no_grad():
        logprobs, entropy = completion_logprobs(
            model, gen.input_ids, gen.attention_mask, gen.prompt_length, 1.0, True, chunk_size=1024
        )
    assert logprobs.shape == (2, LONG) and bool(torch.isfinite(logprobs).all()) and bool((logprobs <= 0).all())
    assert bool((entropy > 0).all())


def test_a_length_past_the_models_positions_is_refused_before_sampling(never_ending):
    model, tokenizer = never_ending
    with pytest.raises(ValueError, match=r"plus sampling.max_new_tokens 8447 passes the model's max_position"):
        TorchGenerator(tokenizer).generate(model, ["1 + 2"], SamplingConfig(max_new_tokens=LONG + 255))
    from r1_lightning.training.grpo_settings import check_lengths

    with pytest.raises(ValueError, match=r"`model.sampling.max_new_tokens` 9000 leaves no room for a prompt"):
        check_lengths(model, SamplingConfig(max_new_tokens=9000), SamplingConfig(max_new_tokens=10))
