"""GRPO loss, advantages and KL against hand-computed values and gradients."""

import math

import pytest
import torch

from r1_lightning.models.logprobs import token_logprobs
from r1_lightning.training.losses import aggregate_loss, group_advantages, grpo_loss, k3_kl


def test_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=2, eps=0.0)
    # group (1, 0): mean .5, population std .5 -> (+1, -1); group (.5, .5): zero; group (2, 2): zero
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0, 0.0]))


def test_advantages_without_std_scaling_is_centering():
    adv = group_advantages(torch.tensor([3.0, 1.0, 2.0]), group_size=3, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0]))


def test_all_equal_rewards_give_zero_advantage_and_no_nan():
    adv = group_advantages(torch.tensor([0.0, 0.0, 0.0, 0.0]), group_size=4)
    assert torch.equal(adv, torch.zeros(4))


def test_advantages_reject_bad_group_size():
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(torch.ones(5), group_size=2)


def test_k3_kl_value_and_gradient():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, -2.0])
    kl = k3_kl(logp, ref)
    # r = exp(ref - logp): exp(-.5) - (-.5) - 1 = 0.10653; equal log-probs give 0
    torch.testing.assert_close(kl, torch.tensor([math.exp(-0.5) - 0.5, 0.0]), atol=1e-6, rtol=0)
    kl.sum().backward()
    # d/dlogp [e^(ref-logp) - (ref-logp) - 1] = -e^(ref-logp) + 1
    torch.testing.assert_close(logp.grad, torch.tensor([1 - math.exp(-0.5), 0.0]), atol=1e-6, rtol=0)


def test_aggregations_hand_computed():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # sequence: mean(2, 4) = 3; token: 10 / 4 = 2.5; dr_grpo: 10 / (2 * 5)
    assert aggregate_loss(per_token, mask, "sequence").item() == pytest.approx(3.0)
    assert aggregate_loss(per_token, mask, "token").item() == pytest.approx(2.5)
    assert aggregate_loss(per_token, mask, "dr_grpo", max_completion_length=5).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(per_token, mask, "bogus")


def test_ratio_one_gives_minus_advantage_and_grad():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    out = grpo_loss(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2), loss_type="token")
    assert out.loss.item() == pytest.approx(-2.0)
    out.loss.backward()
    # d(-ratio * A)/dlogp = -ratio * A / num_tokens = -2 / 2 per token
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -1.0]]))
    assert out.clip_ratio.item() == 0.0


def test_clip_higher_caps_the_ratio_at_one_plus_epsilon_high():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.25, 1.35]])).requires_grad_()
    adv = torch.tensor([1.0])
    symmetric = grpo_loss(logp, old, adv, torch.ones(1, 2), epsilon_low=0.2, epsilon_high=0.2, loss_type="token")
    higher = grpo_loss(logp, old, adv, torch.ones(1, 2), epsilon_low=0.2, epsilon_high=0.28, loss_type="token")
    # symmetric: both ratios clipped to 1.2; clip-higher: 1.25 passes, 1.35 clipped to 1.28
    assert symmetric.loss.item() == pytest.approx(-(1.2 + 1.2) / 2)
    assert higher.loss.item() == pytest.approx(-(1.25 + 1.28) / 2)
    assert symmetric.clip_ratio.item() == pytest.approx(1.0)
    assert higher.clip_ratio.item() == pytest.approx(0.5)
    higher.loss.backward()
    # gradient flows only through the unclipped token: d(-ratio/2)/dlogp = -ratio/2
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.25 / 2, 0.0]]))


def test_negative_advantage_clips_low_side():
    old = torch.zeros(1, 1)
    logp = torch.log(torch.tensor([[0.5]])).requires_grad_()
    out = grpo_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 1), epsilon_low=0.2, loss_type="token")
    # min(0.5 * -1, 0.8 * -1) = -0.8 -> loss 0.8, clipped, no gradient
    assert out.loss.item() == pytest.approx(0.8)
    out.loss.backward()
    assert logp.grad.abs().sum().item() == 0.0


def test_kl_term_carries_gradient_inside_loss():
    logp = torch.tensor([[-1.0]], requires_grad=True)
    ref = torch.tensor([[-1.5]])
    out = grpo_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 1), ref_logprobs=ref, beta=0.1)
    assert out.loss.item() == pytest.approx(0.1 * (math.exp(-0.5) - 0.5))
    assert out.kl.item() == pytest.approx(math.exp(-0.5) - 0.5)
    out.loss.backward()
    assert logp.grad.item() == pytest.approx(0.1 * (1 - math.exp(-0.5)))


def test_beta_without_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), beta=0.1)


@pytest.mark.parametrize("loss_type", ["sequence", "token", "dr_grpo"])
def test_micro_batching_leaves_loss_and_gradient_unchanged(loss_type):
    torch.manual_seed(0)
    n, length = 6, 5
    base = torch.randn(n, length)
    old = base + 0.1 * torch.randn(n, length)
    ref = base + 0.1 * torch.randn(n, length)
    adv = torch.randn(n)
    mask = (torch.rand(n, length) > 0.3).long()
    mask[:, 0] = 1
    common = dict(beta=0.05, epsilon_low=0.2, epsilon_high=0.28, loss_type=loss_type, max_completion_length=8)

    full = base.clone().requires_grad_()
    grpo_loss(full, old, adv, mask, ref_logprobs=ref, **common).loss.backward()

    split = base.clone().requires_grad_()
    total = 0.0
    for part in (slice(0, 1), slice(1, 4), slice(4, 6)):
        out = grpo_loss(
            split[part],
            old[part],
            adv[part],
            mask[part],
            ref_logprobs=ref[part],
            num_sequences=n,
            num_tokens=float(mask.sum()),
            **common,
        )
        out.loss.backward()
        total += out.loss.item()
    reference_loss = grpo_loss(base, old, adv, mask, ref_logprobs=ref, **common).loss.item()
    assert total == pytest.approx(reference_loss, abs=1e-6)
    torch.testing.assert_close(split.grad, full.grad)


def test_token_logprobs_matches_log_softmax_with_temperature():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, tokens, temperature=0.7), expected)
