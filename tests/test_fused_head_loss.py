"""The policy's head and GRPO loss fused (``models/fused_head_loss.py``, ``training/policy_loss.py``): the same loss
and the same gradient of every weight as the chunked head whose backward recomputes the logits, for each loss type
that is token-separable; one head product per chunk fewer; and the settings that are not separable keep the
unfused path (the test shows what fusing them would get wrong)."""

import pytest
import torch

from r1_lightning.generation.rollout import Generation, MicroBatch, Rollout
from r1_lightning.models import chunked_logprobs
from r1_lightning.models.grads_in_place import grads_in_place
from r1_lightning.training.grpo import GRPOModule
from r1_lightning.training.policy_loss import fusable

N, G, P, L = 4, 2, 5, 9


def _module(**settings) -> GRPOModule:
    torch.manual_seed(0)
    base = dict(model="tiny:random", num_generations=G, validate_at_start=False, logprob_chunk_size=7)
    return GRPOModule(**{**base, **settings})


def _rollout(module: GRPOModule, stored_old: bool, sampled: bool) -> Rollout:
    """Four rows in two groups: left-padded prompts, completions of different lengths (right padding)."""
    g = torch.Generator().manual_seed(3)
    vocab = module.policy.config.vocab_size
    prompts = torch.randint(3, vocab, (N // G, P), generator=g).repeat_interleave(G, 0)
    ids = torch.cat([prompts, torch.randint(3, vocab, (N, L), generator=g)], dim=1)
    attention = torch.ones_like(ids)
    attention[:, :2] = torch.tensor([[0, 1]]).repeat(N, 1)  # one left-pad column on every row
    completion = torch.ones(N, L, dtype=torch.long)
    for row, length in enumerate((9, 6, 3, 8)):
        completion[row, length:] = 0
        attention[row, P + length :] = 0
    noise = lambda: -torch.rand(N, L, generator=g) * 4  # noqa: E731
    gen = Generation(
        ids, attention, completion, P, torch.zeros(N, dtype=torch.bool), [""] * N, 0.0,
        sample_logprobs=noise() if sampled else None,
    )  # fmt: skip
    ref = noise() if module.hparams.beta else None
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    old = noise() if stored_old else None
    return Rollout(gen, old, ref, torch.zeros(N), advantages, {}, G)


def _step(module: GRPOModule, rollout: Rollout, fuse: bool, temperature: float, in_place: bool = True, scale=1.0):
    """Loss and every weight's gradient over two micro-batches (two groups), as the training step runs them
    (``in_place``: one process, the head's gradient written into ``.grad``; else handed to autograd, as under
    DDP and FSDP2; ``scale``: a loss scaler's factor)."""
    module.policy.zero_grad(set_to_none=True)
    module.sampling = module.sampling.__class__(temperature=temperature, max_new_tokens=L)
    mask = rollout.generation.trained_mask()
    totals = dict(num_sequences=N, num_tokens=float(mask.sum()), max_completion_length=L)
    losses = []
    for rows in (torch.tensor([0, 1]), torch.tensor([2, 3])):
        mb = MicroBatch(rows, 0, L)
        with grads_in_place(module.policy, enabled=in_place):
            step = module.micro_batch_loss(rollout, mb, mask[rows], totals, 2, fuse)
            (step.loss * scale).backward()
        losses.append(float(step.loss.detach()))
    grads = {name: p.grad.clone() for name, p in module.policy.named_parameters() if p.grad is not None}
    return losses, grads


SEPARABLE = [
    dict(loss_type="grpo"),
    dict(loss_type="dapo", beta=0.0),
    dict(loss_type="dr_grpo", kl_bias_correction=True),
    dict(loss_type="bnpo", entropy_coef=0.05),
    dict(loss_type="luspo", loss_params={"delta": 1.3}),
    dict(loss_type="cispo", epsilon_high=1.1),
    dict(loss_type="sapo"),
    dict(loss_type="grpo", tis_cap=2.0),
    dict(loss_type="dapo", vllm_importance_sampling_mode="token_mask"),
]


@pytest.mark.parametrize("stored_old", [False, True], ids=["old=current", "old=stored"])
@pytest.mark.parametrize("settings", SEPARABLE, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_fused_equals_the_recomputing_head(settings, stored_old):
    module = _module(**settings)
    sampled = "tis_cap" in settings or "vllm_importance_sampling_mode" in settings
    assert fusable(module.hparams, stored_old, sampled) is None
    rollout = _rollout(module, stored_old, sampled)
    temperature = 0.7 if stored_old else 1.0
    expected_losses, expected = _step(module, rollout, False, temperature)
    losses, got = _step(module, rollout, True, temperature)
    assert losses == pytest.approx(expected_losses, rel=1e-5, abs=1e-7)
    assert got.keys() == expected.keys() and len(got) > 3
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("scale", [1.0, 64.0])
def test_fused_under_autograds_accumulator_equals_the_recomputing_head(scale):
    """Without in-place gradients (DDP, FSDP2) the head's gradient reaches autograd in backward, scaled by the
    loss's gradient (a loss scaler's factor)."""
    module = _module(entropy_coef=0.05)
    rollout = _rollout(module, True, False)
    _, expected = _step(module, rollout, False, 0.7, in_place=False, scale=scale)
    _, got = _step(module, rollout, True, 0.7, in_place=False, scale=scale)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_a_frozen_head_gets_no_gradient_and_the_layers_the_same():
    module = _module()
    head = module.policy.get_output_embeddings()
    head.weight.requires_grad_(False)  # (tied: the embedding is frozen with it, as LoRA leaves both)
    rollout = _rollout(module, False, False)
    _, expected = _step(module, rollout, False, 1.0)
    _, got = _step(module, rollout, True, 1.0)
    frozen = {name for name, p in module.policy.named_parameters() if p is head.weight}
    assert got.keys() == expected.keys() and frozen and not frozen & got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_saves_one_head_product_per_chunk(monkeypatch):
    module = _module()
    rollout = _rollout(module, False, False)
    calls = []
    original = chunked_logprobs._logits
    counting = lambda *args: calls.append(1) or original(*args)  # noqa: E731
    monkeypatch.setattr(chunked_logprobs, "_logits", counting)
    import r1_lightning.models.fused_head_loss as fused

    monkeypatch.setattr(fused, "_logits", counting)
    _step(module, rollout, False, 1.0)
    unfused = len(calls)
    calls.clear()
    _step(module, rollout, True, 1.0)
    assert unfused == 2 * len(calls) > 0  # forward + recompute, against forward only


@pytest.mark.parametrize(
    "settings, reason",
    [
        (dict(importance_sampling_level="sequence"), "importance_sampling_level"),
        (dict(loss_type="vespo"), "vespo"),
        (dict(top_entropy_quantile=0.5), "top_entropy_quantile"),
        (dict(off_policy_mask_threshold=0.1, num_iterations=2), "off_policy_mask_threshold"),
        (dict(vllm_importance_sampling_mode="sequence_mask"), "sequence_mask"),
        (dict(fused_head_loss=False), "fused_head_loss"),
    ],
)
def test_settings_that_are_not_token_separable_keep_the_unfused_path(settings, reason):
    module = _module(**settings)
    assert reason in fusable(module.hparams, stored_old=False, sampled=True)


def test_fusing_a_non_separable_loss_would_be_wrong():
    """Why :func:`fusable` refuses GSPO's sequence ratio: forced through the fused path, the gradient differs."""
    module = _module(importance_sampling_level="sequence")
    rollout = _rollout(module, stored_old=True, sampled=False)
    _, expected = _step(module, rollout, False, 1.0)
    _, got = _step(module, rollout, True, 1.0)
    head = module.policy.get_output_embeddings().weight
    name = next(n for n, p in module.policy.named_parameters() if p is head)
    assert not torch.allclose(got[name], expected[name], rtol=1e-3, atol=1e-5)


def test_the_fused_backward_refuses_a_scaled_loss():
    module = _module()
    rollout = _rollout(module, False, False)
    mask = rollout.generation.trained_mask()
    totals = dict(num_sequences=N, num_tokens=float(mask.sum()), max_completion_length=L)
    with grads_in_place(module.policy):
        step = module.micro_batch_loss(rollout, MicroBatch(torch.arange(N), 0, L), mask, totals, 1, True)
        with pytest.raises(RuntimeError, match="unscaled loss"):
            (step.loss * 1024.0).backward()


def test_fused_in_bf16_equals_the_recomputing_head_within_bf16_rounding():
    """bf16 weights take the autograd path (their gradient is not float32); within 4 bf16 ulp of each norm."""
    module = _module(dtype="bfloat16", entropy_coef=0.05)
    rollout = _rollout(module, True, False)
    expected_losses, expected = _step(module, rollout, False, 0.7)
    losses, got = _step(module, rollout, True, 0.7)
    assert losses == pytest.approx(expected_losses, rel=1e-3, abs=1e-4)
    for name, grad in expected.items():
        error = (got[name].float() - grad.float()).norm() / grad.float().norm().clamp(min=1e-12)
        assert error <= 4 * 2.0**-7, f"{name}: relative error {error:.4f}"
