"""Head and embedding gradients written straight into ``.grad`` (``models/grads_in_place.py``): the same gradients
as autograd's own path over accumulated micro-batches, tied or untied, with padded rows; and no ``[vocab, hidden]``
gradient is ever handed to autograd's accumulator (what makes the extra buffers go away)."""

import pytest
import torch

from r1_lightning.generation.forward import completion_logprobs
from r1_lightning.models.grads_in_place import grads_in_place


def _model(tied: bool, dtype=torch.float32):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tied, pad_token_id=0,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).to(dtype)


def _micro_batches():
    """Two micro-batches of left-padded rows (pad id 0 inside the inputs, which must get no gradient)."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for rows in (3, 2):
        ids = torch.randint(1, 300, (rows, 12), generator=g)
        attention = torch.ones_like(ids)
        ids[0, :3], attention[0, :3] = 0, 0
        ids[1, 6] = 0  # the pad id as an attended token: nn.Embedding still gives its row no gradient
        batches.append((ids, attention))
    return batches


def _grads(model, in_place: bool, chunk_size: int, hooked: list) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    weight = model.get_input_embeddings().weight
    # called with the gradient autograd accumulates into .grad, if it is handed one
    record = lambda grad: hooked.append(grad.shape) if grad is not None else None  # noqa: E731
    handle = weight.register_hook(record) if weight.requires_grad else None
    for ids, attention in _micro_batches():
        with grads_in_place(model, enabled=in_place):
            logprobs, _ = completion_logprobs(model, ids, attention, 4, temperature=0.7, chunk_size=chunk_size)
            (logprobs * torch.linspace(-1, 1, logprobs.shape[1])).sum().backward()
    if handle is not None:
        handle.remove()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
def test_in_place_gradients_equal_autograds_over_micro_batches(tied):
    model = _model(tied)
    plain_hooks, in_place_hooks = [], []
    expected = _grads(model, False, chunk_size=5, hooked=plain_hooks)
    got = _grads(model, True, chunk_size=5, hooked=in_place_hooks)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    if not tied:  # the padding row's lookups add nothing (tied, the head's softmax still reaches it)
        assert float(got["model.embed_tokens.weight"][0].abs().sum()) == 0.0
    # autograd's accumulator got a [vocab, hidden] gradient for the embedding in every backward before, none now
    assert len(plain_hooks) == 2 and in_place_hooks == []
    # and the module is back as it was
    assert "forward" not in vars(model.get_input_embeddings())


def test_full_logits_and_ineligible_weights_take_autograds_path():
    # full logits (chunk 0): only the embedding is written in place, the head's gradient goes through autograd
    model = _model(tied=False)
    expected = _grads(model, False, chunk_size=0, hooked=[])
    got = _grads(model, True, chunk_size=0, hooked=[])
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # a frozen embedding is left alone (no gradient appears for it)
    model.get_input_embeddings().weight.requires_grad_(False)
    got = _grads(model, True, chunk_size=5, hooked=[])
    assert "model.embed_tokens.weight" not in got
    assert "forward" not in vars(model.get_input_embeddings())


def test_an_error_inside_the_block_restores_the_embedding():
    model = _model(tied=True)
    with pytest.raises(RuntimeError, match="boom"), grads_in_place(model):
        assert "forward" in vars(model.get_input_embeddings())
        raise RuntimeError("boom")
    assert "forward" not in vars(model.get_input_embeddings())
