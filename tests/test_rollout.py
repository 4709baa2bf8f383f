"""Rollout engine: masks, stop conditions, log-probs; the tiny offline model."""

import pytest
import torch

from r1_lightning.generation.forward import completion_logprobs
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.sampler import TorchGenerator


def test_generation_masks_stop_and_truncation(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    torch.manual_seed(0)
    model.train()
    prompts = ["1 + 2", "a much longer prompt here: 12 + 7"]
    gen = TorchGenerator(tokenizer).generate(model, prompts, SamplingConfig(max_new_tokens=12))
    n, total = gen.input_ids.shape
    assert n == 2 and gen.completion_mask.shape == (2, total - gen.prompt_length)
    lengths = gen.completion_mask.sum(1)
    eos = tokenizer.eos_token_id
    for i in range(n):
        tokens = gen.input_ids[i, gen.prompt_length :][: lengths[i]]
        # a completion that finished ends with EOS; one that did not used all max_new_tokens
        if gen.truncated[i]:
            assert lengths[i] == 12 and eos not in tokens.tolist()
        else:
            assert tokens[-1].item() == eos
    # left padding: the shorter prompt's attention starts later
    assert gen.attention_mask[0, 0] == 0 and gen.attention_mask[1, 0] == 1
    assert model.training  # generation ran in eval mode and restored training mode


def test_stop_string_ends_completion(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    torch.manual_seed(0)
    # Stop on a string the random model emits at once: the first token's text.
    first = TorchGenerator(tokenizer).generate(model, ["x"], SamplingConfig(temperature=0, max_new_tokens=1))
    stop = first.texts[0].strip() or first.texts[0]
    gen = TorchGenerator(tokenizer).generate(
        model, ["x"], SamplingConfig(temperature=0, max_new_tokens=8, stop_strings=(stop,))
    )
    assert gen.completion_mask.sum().item() == 1 and not gen.truncated[0]


def test_greedy_is_deterministic_and_logprobs_and_entropy_match_the_next_token_distribution(
    tiny_model_and_tokenizer,
):
    """Greedy decoding repeats itself; the trainer's log-prob of each greedy token is the maximum of the
    next-token log-softmax at the position before it (the logits are shifted by one), and its entropy is
    that distribution's, both to float32 rounding."""
    model, tokenizer = tiny_model_and_tokenizer
    engine = TorchGenerator(tokenizer)
    a = engine.generate(model, ["3 + 4", "10 + 2"], SamplingConfig(temperature=0, max_new_tokens=6))
    b = engine.generate(model, ["3 + 4", "10 + 2"], SamplingConfig(temperature=0, max_new_tokens=6))
    assert torch.equal(a.input_ids, b.input_ids)
    model.eval()
    with torch.no_grad():
        logprobs, entropy = completion_logprobs(
            model, a.input_ids, a.attention_mask, a.prompt_length, temperature=1.0, with_entropy=True
        )
        positions = (a.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=a.input_ids, attention_mask=a.attention_mask, position_ids=positions).logits
    # position t predicts token t + 1: the completion's tokens are predicted from P - 1 .. end - 1
    next_token = torch.log_softmax(logits[:, a.prompt_length - 1 : -1].double(), dim=-1)
    mask = a.completion_mask.bool()
    assert logprobs.shape == a.completion_mask.shape
    torch.testing.assert_close(logprobs[mask].double(), next_token.max(-1).values[mask], atol=1e-5, rtol=0)
    expected_entropy = -(next_token.exp() * next_token).sum(-1)
    torch.testing.assert_close(entropy[mask].double(), expected_entropy[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.sample_logprobs[mask].double(), next_token.max(-1).values[mask], atol=1e-5, rtol=0)


def test_sampling_config_validates():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)


def test_tiny_model_round_trips_in_hf_format(tiny_model_and_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    retok = AutoTokenizer.from_pretrained(tmp_path)
    text = " <think>12+7=19</think> <answer>19</answer>"
    assert retok(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_missing_model_path_is_clear():
    from r1_lightning.models.loading import load_policy

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy("./no/such/model")
    with pytest.raises(ValueError, match="unknown tiny model"):
        load_policy("tiny:huge")


def test_sample_categorical_follows_the_distribution_and_skips_impossible_tokens():
    from r1_lightning.generation.sampler import sample_categorical

    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    scores = probs.log().expand(20000, -1)  # log 0 = -inf: impossible tokens
    counts = torch.bincount(sample_categorical(scores), minlength=5).float() / 20000
    assert counts[1] == 0 and counts[4] == 0
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)  # 3+ standard errors at n = 20000
    # a row whose mass is all on one token always returns it; the first token is reachable
    assert sample_categorical(torch.tensor([[float("-inf"), 0.0], [0.0, float("-inf")]])).tolist() == [1, 0]


@pytest.mark.parametrize("engine", ["lean", "hf"])
def test_sampler_logprobs_match_the_trainers_forward(tiny_model_and_tokenizer, engine):
    """The sampler records the log-prob of each token it drew (temperature-scaled, before top-k/p); in
    float32 it equals the trainer's forward up to rounding: the training-inference gap is ~0 here."""
    from r1_lightning.generation.mismatch import MismatchMeter

    model, tokenizer = tiny_model_and_tokenizer
    torch.manual_seed(0)
    prompts = [p for p in ["1 + 2", "a longer prompt: 12 + 7"] for _ in range(3)]
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=10)
    gen = TorchGenerator(tokenizer, engine=engine).generate(model, prompts, sampling, group_size=3)
    model.eval()
    with torch.no_grad():
        trainer = completion_logprobs(model, gen.input_ids, gen.attention_mask, gen.prompt_length, temperature=0.7)[0]
    mask = gen.completion_mask.bool()
    torch.testing.assert_close(gen.sample_logprobs[mask], trainer[mask], atol=1e-4, rtol=1e-4)
    assert (gen.sample_logprobs[~mask] == 0).all()
    meter = MismatchMeter()
    meter.add(trainer, gen.sample_logprobs, gen.completion_mask)
    stats = meter.summary()
    assert stats["mismatch/abs_logprob_diff"] < 1e-4 and stats["mismatch/frac_over_threshold"] == 0.0
