"""bf16 weights: the chunked log-probs (on by default) equal the full-logits path within bf16 rounding, in value
and in every weight's gradient (issue 23, item 1). Runs on any CPU: torch computes bf16 products everywhere
(with bf16 instructions, ``avx512_bf16``, they are fast).

The bound is bf16's own: its significand has 8 bits, so a value is rounded to within ``2**-8`` of itself
(``ULP = 2**-7`` apart). Both paths make bf16 logits from the same bf16 hidden states and take the log-softmax in
float32, so their log-probs may differ by the rounding of the logits, a few ulp of the largest logit; their
gradients are bf16 tensors, so they may differ by a few ulp relative to the gradient's size. Either is far below
what a mistake costs (the temperature left out, checked below)."""

import pytest
import torch

from r1_lightning.generation.forward import completion_logprobs

ULP = 2.0**-7
P = 4


def _model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).to(torch.bfloat16).train()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 400, (3, P + 12), generator=g)
    attention = torch.ones_like(ids)
    attention[0, :2] = 0
    weights = torch.randn(3, 12, generator=g)  # a loss's per-token weights, signs mixed
    return ids, attention, weights


def _run(model, chunk_size, temperature):
    ids, attention, weights = _batch()
    model.zero_grad(set_to_none=True)
    logprobs, _ = completion_logprobs(model, ids, attention, P, temperature, chunk_size=chunk_size)
    loss = (logprobs * weights).sum()
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logprobs.detach(), float(loss.detach()), grads


def _largest_logit(model) -> float:
    ids, attention, _ = _batch()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attention).logits.float().abs().max().item()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_full_logits_within_bf16_rounding(temperature):
    model = _model()
    full, full_loss, full_grads = _run(model, 0, temperature)
    chunked, chunked_loss, chunked_grads = _run(model, 5, temperature)
    assert chunked.dtype == torch.float32  # log-probs in float32 from bf16 weights
    logit_ulp = ULP * max(1.0, _largest_logit(model)) / temperature
    assert (chunked - full).abs().max().item() <= 4 * logit_ulp
    assert abs(chunked_loss - full_loss) <= 4 * logit_ulp * _batch()[2].abs().sum().item()
    assert chunked_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        error = (chunked_grads[name] - grad).norm() / grad.norm().clamp(min=1e-12)
        assert error <= 4 * ULP, f"{name}: relative error {error:.4f} > 4 ulp"


def test_the_bound_catches_a_wrong_temperature():
    """The tolerance is tight enough to fail a real mistake: scoring at T = 1 what was sampled at T = 0.7."""
    model = _model()
    full, _, full_grads = _run(model, 0, 0.7)
    wrong, _, wrong_grads = _run(model, 5, 1.0)
    logit_ulp = ULP * max(1.0, _largest_logit(model)) / 0.7
    assert (wrong - full).abs().max().item() > 4 * logit_ulp
    errors = [(wrong_grads[n] - g).norm() / g.norm().clamp(min=1e-12) for n, g in full_grads.items()]
    assert max(errors) > 4 * ULP
