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


# --- wired into the trainer's forwards (policy, old policy, reference, entropy) ---------------------------


def _rollout(tiny_model_and_tokenizer):
    from r1_lightning.generation.rollout import SamplingConfig
    from r1_lightning.generation.sampler import TorchGenerator

    model, tokenizer = tiny_model_and_tokenizer
    torch.manual_seed(0)
    prompts = [p for p in ["1 + 2", "a longer prompt: 12 + 7", "3", "19 + 19?", "4 + 4", "7"] for _ in range(4)]
    sampling = SamplingConfig(max_new_tokens=16)
    return model, TorchGenerator(tokenizer).generate(model, prompts, sampling, group_size=4)


def _scores_and_grads(model, fn, weights):
    model.zero_grad()
    logprobs, entropy = fn()
    (logprobs * weights).sum().backward()
    return logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("shared", [False, True], ids=["per-row", "shared-prefix"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_trainer_forwards_by_chunks_equal_full_logits_in_value_and_gradient(
    tiny_model_and_tokenizer, shared, temperature
):
    from r1_lightning.generation.forward import completion_logprobs, shared_prefix_logprobs

    model, gen = _rollout(tiny_model_and_tokenizer)
    assert model.config.tie_word_embeddings  # the head's gradient lands on the embedding matrix too
    weights = torch.randn(gen.completion_mask.shape, generator=torch.Generator().manual_seed(1))
    args = (model, gen.input_ids, gen.attention_mask, gen.prompt_length)

    def run(chunk_size):
        if shared:
            groups = torch.arange(gen.input_ids.shape[0]) // 4
            return lambda: shared_prefix_logprobs(*args, groups, temperature, True, chunk_size)
        return lambda: completion_logprobs(*args, temperature, True, chunk_size)

    model.train()
    full, full_entropy, full_grads = _scores_and_grads(model, run(0), weights)
    chunked, chunked_entropy, chunked_grads = _scores_and_grads(model, run(5), weights)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_entropy, full_entropy, atol=1e-5, rtol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # the head is back in place after the forward
    assert type(model.get_output_embeddings()) is torch.nn.Linear


def test_no_tokens_by_vocabulary_tensor_is_built(tiny_model_and_tokenizer):
    """Record every tensor with a vocabulary-sized dimension that the forward and backward create: the
    largest is the head's weight (or its gradient) or one chunk of logits, never rows x tokens x vocab
    (which the full path, checked too, does build)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from r1_lightning.generation.forward import completion_logprobs

    model, gen = _rollout(tiny_model_and_tokenizer)
    vocab = model.config.vocab_size

    class LargestOutput(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else [out]:
                if isinstance(t, torch.Tensor) and vocab in t.shape:
                    self.largest = max(self.largest, t.numel())
            return out

    rows, tokens = gen.completion_mask.shape
    embedding = vocab * model.config.hidden_size  # the weights themselves (and their gradient) are this big

    def largest(chunk_size):
        with LargestOutput() as probe:
            logprobs, _ = completion_logprobs(
                model, gen.input_ids, gen.attention_mask, gen.prompt_length, 1.0, True, chunk_size
            )
            logprobs.sum().backward()
        return probe.largest

    assert rows * tokens * vocab > 4 * max(embedding, 4 * vocab)  # the test can tell the two apart
    assert largest(0) >= rows * tokens * vocab
    assert largest(4) <= max(embedding, 4 * vocab)


def test_a_wrapped_head_is_scored_by_checkpointed_chunks(tiny_model_and_tokenizer):
    """LoRA on the output head (peft wraps ``lm_head``): the per-chunk checkpointed path, same values and
    gradients as full logits."""
    import copy

    from peft import LoraConfig, get_peft_model

    from r1_lightning.generation.forward import completion_logprobs

    base, gen = _rollout(tiny_model_and_tokenizer)
    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, target_modules=["lm_head", "q_proj"], init_lora_weights=False)
    )
    assert type(model.get_base_model().get_output_embeddings()) is not torch.nn.Linear
    weights = torch.randn(gen.completion_mask.shape, generator=torch.Generator().manual_seed(2))
    args = (model, gen.input_ids, gen.attention_mask, gen.prompt_length, 0.8, True)
    full, full_entropy, full_grads = _scores_and_grads(model, lambda: completion_logprobs(*args, 0), weights)
    chunked, entropy, grads = _scores_and_grads(model, lambda: completion_logprobs(*args, 6), weights)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, full_entropy, atol=1e-5, rtol=1e-5)
    trained = [name for name, grad in full_grads.items() if "lora" in name]
    assert trained and all(torch.allclose(grads[n], full_grads[n], atol=1e-5, rtol=1e-4) for n in trained)


def test_grpo_checks_the_chunk_size(tmp_path):
    from r1_lightning.training.grpo import GRPOModule

    with pytest.raises(ValueError, match="`logprob_chunk_size` must be a whole number of tokens >= 0 .0 = full"):
        GRPOModule(model="tiny:random", logprob_chunk_size=-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_gradient_by_chunks_equals_autograd_on_full_logits(temperature):
    """The entropy bonus needs dH/dz = -p (log p + H) through the chunked head: equal to autograd's."""
    from r1_lightning.models.chunked_logprobs import head_scores

    hidden, weight, bias, tokens, upstream = _inputs(torch.float64, bias=True)
    head = torch.nn.Linear(16, 50, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(weight), head.bias.copy_(bias)
    g_entropy = torch.randn(2, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    logprobs, entropy = head_scores(head, hidden, tokens, temperature, 3, True)
    ((logprobs * upstream).sum() + (entropy * g_entropy).sum()).backward()
    chunked = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad, head.weight.grad, head.bias.grad = None, None, None
    logp = torch.log_softmax(head(hidden) / temperature, -1)
    full_entropy = -(logp.exp() * logp).sum(-1)
    full_lp = logp.gather(-1, tokens[..., None]).squeeze(-1)
    ((full_lp * upstream).sum() + (full_entropy * g_entropy).sum()).backward()
    torch.testing.assert_close(entropy.detach(), full_entropy.detach())
    for got, want in zip(chunked, (hidden.grad, head.weight.grad, head.bias.grad), strict=True):
        torch.testing.assert_close(got, want)
