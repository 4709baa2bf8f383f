"""Chunked log-probs from hidden states equal the full-logits path in value and gradient (issue 23's
kernel): hidden states, output weights and bias get the gradients ``token_logprobs`` on ``h @ W.T`` gives,
for any chunk size, at any temperature, with tied weights."""

import pytest
import torch

from r1_lightning.models.chunked_logprobs import chunked_token_entropy, chunked_token_logprobs
from r1_lightning.models.logprobs import token_entropy, token_logprobs


def _inputs(dtype=torch.float32, bias=False):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 16, generator=g, dtype=dtype, requires_grad=True)
    weight = (torch.randn(50, 16, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b = (torch.randn(50, generator=g, dtype=dtype) * 0.1).requires_grad_() if bias else None
    tokens = torch.randint(0, 50, (2, 7), generator=g)
    upstream = torch.randn(2, 7, generator=g, dtype=dtype)  # a loss's weights per token (signs mixed)
    return hidden, weight, b, tokens, upstream


def _full(hidden, weight, bias, tokens, temperature):
    logits = hidden @ weight.t() + (bias if bias is not None else 0)
    return token_logprobs(logits, tokens, temperature)


@pytest.mark.parametrize("chunk_size", [1, 3, 14, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_equal_the_full_logits_path(chunk_size, temperature, bias):
    hidden, weight, b, tokens, upstream = _inputs(bias=bias)
    full = _full(hidden, weight, b, tokens, temperature)
    params = [hidden, weight] + ([b] if bias else [])
    expected = torch.autograd.grad((full * upstream).sum(), params)
    chunked = chunked_token_logprobs(hidden, weight, tokens, temperature, chunk_size, bias=b)
    got = torch.autograd.grad((chunked * upstream).sum(), params)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_gradcheck_in_float64():
    hidden, weight, b, tokens, _ = _inputs(torch.float64, bias=True)
    fn = lambda h, w, bb: chunked_token_logprobs(h, w, tokens, 0.8, 4, bias=bb)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight, b), eps=1e-6, atol=1e-5)


def test_tied_weights_accumulate_both_gradients():
    """A tied LM head is the embedding matrix: its gradient is the head's plus the embedding lookup's."""
    hidden, weight, _, tokens, upstream = _inputs()

    def states():  # the same matrix as input embeddings and as output projection
        return hidden + torch.nn.functional.embedding(tokens, weight)

    expected = torch.autograd.grad((_full(states(), weight, None, tokens, 1.0) * upstream).sum(), weight)[0]
    got = torch.autograd.grad((chunked_token_logprobs(states(), weight, tokens, 1.0, 5) * upstream).sum(), weight)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_entropy_equals_the_full_path():
    hidden, weight, _, _, _ = _inputs()
    with torch.no_grad():
        expected = token_entropy(hidden @ weight.t(), 0.7)
    torch.testing.assert_close(chunked_token_entropy(hidden, weight, 0.7, chunk_size=3), expected, rtol=0, atol=1e-5)


def test_a_wrong_shift_or_temperature_is_caught():
    """The comparison bites: log-probs of the tokens one position off, or at another temperature, differ."""
    hidden, weight, _, tokens, _ = _inputs()
    full = _full(hidden, weight, None, tokens, 0.7)
    assert not torch.allclose(chunked_token_logprobs(hidden, weight, tokens.roll(1, -1), 0.7, 4), full, atol=1e-3)
    assert not torch.allclose(chunked_token_logprobs(hidden, weight, tokens, 1.0, 4), full, atol=1e-3)
