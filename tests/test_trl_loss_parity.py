"""This project's GRPO loss against TRL's own loss code (``GRPOTrainer._compute_loss`` of trl 1.16, run on
the same log-probs through a stand-in for the trainer object), for every variant both have: loss types,
token- and sequence-level importance sampling (GSPO), the plain and the bias-corrected KL, two-sided
clip ranges. Loss and gradient must agree to float64 rounding.

Mapping: ``loss_type`` sequence = TRL ``grpo``, token = TRL ``dapo`` (normalised by the batch's tokens),
dr_grpo = ``dr_grpo``; ``kl_bias_correction`` = TRL ``use_bias_correction_kl`` (TRL's default True,
this project's default False: the R1 paper's k3).
"""

import itertools
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from r1_lightning.training.losses import grpo_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="trl (the dev extra) runs TRL's loss code")

TRL_LOSS = {"sequence": "grpo", "token": "dapo", "dr_grpo": "dr_grpo"}


class _Accelerator:
    num_processes, sync_gradients = 1, True

    def gather(self, x):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(
    logprobs, old, ref, advantages, mask, *, loss_type, beta, eps_low, eps_high, level, bias_kl, is_ratio=None,
    args=None, off_policy=None, sampling=None, entropies=None, top_entropy_quantile=1.0, entropy_coef=0.0,
):  # fmt: skip
    """TRL's ``_compute_loss`` on given per-token log-probs (its model forward is stood in for)."""
    entropies = torch.zeros_like(logprobs) if entropies is None else entropies
    stub = SimpleNamespace(
        loss_type=TRL_LOSS.get(loss_type, loss_type),
        beta=beta,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        importance_sampling_level=level,
        top_entropy_quantile=top_entropy_quantile,
        off_policy_mask_threshold=off_policy,
        get_off_policy_mask=trl_grpo.GRPOTrainer.get_off_policy_mask,
        get_gamma_weights=trl_grpo.GRPOTrainer.get_gamma_weights,
        use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None,
        _entropy_bonus_enabled=entropy_coef != 0.0,
        entropy_coef=entropy_coef,
        use_adaptive_entropy=False,
        aux_loss_enabled=False,
        current_gradient_accumulation_steps=1,
        max_completion_length=mask.shape[1],
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(
            **{"use_bias_correction_kl": bias_kl, "delta": None, "steps_per_generation": 1, **(args or {})}
        ),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, entropies, None),
    )
    stub.get_high_entropy_mask = lambda e, m, t: trl_grpo.GRPOTrainer.get_high_entropy_mask(stub, e, m, t)
    batch, length = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
        "importance_sampling_ratio": is_ratio,
    }
    if sampling is not None:
        inputs["sampling_per_token_logps"] = sampling
    return trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)


def _rollout(seed: int):
    g = torch.Generator().manual_seed(seed)
    batch, length = 6, 7
    mask = torch.ones(batch, length, dtype=torch.float64)
    for row, n in enumerate([7, 3, 5, 1, 6, 4]):
        mask[row, n:] = 0
    old = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3
    current = old + torch.randn(batch, length, generator=g, dtype=torch.float64) * 0.3  # ratios around 1, some clipped
    ref = old + torch.randn(batch, length, generator=g, dtype=torch.float64) * 0.2
    advantages = torch.randn(batch, generator=g, dtype=torch.float64)
    return current, old, ref, advantages, mask


# (the KL correction has nothing to act on without a KL term: beta 0 runs it once, uncorrected)
VARIANTS = [
    (loss_type, beta, level, bias_kl, clip)
    for loss_type, beta, level, bias_kl, clip in itertools.product(
        ["sequence", "token", "dr_grpo"], [0.0, 0.04], ["token", "sequence"], [False, True], [(0.2, 0.2), (0.2, 0.28)]
    )
    if beta > 0 or not bias_kl
]


def assert_same_loss_and_gradient(ours, theirs, ours_in, theirs_in):
    """Backward both; equal losses and equal, non-zero gradients in the inputs, to float64 rounding."""
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-12, atol=1e-14)
    assert ours_in.grad.abs().sum() > 0


def assert_equal_to_trl(current, old, ref, advantages, mask, *, loss_type, beta, clip, level, bias_kl=False,
                        is_weights=None):  # fmt: skip
    """This project's loss and TRL's on the same inputs: equal loss and gradient to float64 rounding."""
    ours_in, theirs_in = current.clone().requires_grad_(True), current.clone().requires_grad_(True)
    ours = grpo_loss(ours_in, old, advantages, mask, ref_logprobs=ref, beta=beta, epsilon_low=clip[0],
                     epsilon_high=clip[1], loss_type=loss_type, importance_sampling_level=level,
                     kl_bias_correction=bias_kl, is_weights=is_weights).loss  # fmt: skip
    theirs = trl_loss(theirs_in, old, ref, advantages, mask, loss_type=loss_type, beta=beta, eps_low=clip[0],
                      eps_high=clip[1], level=level, bias_kl=bias_kl, is_ratio=is_weights)  # fmt: skip
    assert_same_loss_and_gradient(ours, theirs, ours_in, theirs_in)


@pytest.mark.parametrize("loss_type,beta,level,bias_kl,clip", VARIANTS)
def test_loss_and_gradient_equal_trl(loss_type, beta, level, bias_kl, clip):
    current, old, ref, advantages, mask = _rollout(seed=len(loss_type) + int(beta * 100))
    assert_equal_to_trl(current, old, ref, advantages, mask, loss_type=loss_type, beta=beta, clip=clip, level=level,
                        bias_kl=bias_kl)  # fmt: skip


def test_gspo_ratio_is_one_per_sequence_by_hand():
    """GSPO: s_i = exp(mean_t log-ratio); with A = 1 and no clipping the loss is -mean_i s_i (sequence agg)."""
    current = torch.tensor([[0.1, -0.1, 0.3], [0.0, 0.2, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    out = grpo_loss(
        current,
        old,
        torch.ones(2, dtype=torch.float64),
        mask,
        epsilon_low=10,
        epsilon_high=10,
        importance_sampling_level="sequence",
    )
    s = torch.exp(torch.tensor([0.3 / 3, 0.2 / 2], dtype=torch.float64))
    torch.testing.assert_close(out.loss, -s.mean())
    out.loss.backward()
    # d(-mean s)/d logp_it = -s_i / (2 * |y_i|) on each real token, 0 on padding
    expected = torch.stack(
        [-s[0] / 6 * torch.ones(3, dtype=torch.float64), torch.tensor([-s[1] / 4, -s[1] / 4, 0.0], dtype=torch.float64)]
    )
    torch.testing.assert_close(current.grad, expected)


@pytest.mark.parametrize("loss_type,level", [("sequence", "token"), ("token", "token"), ("dr_grpo", "sequence")])
def test_truncated_importance_sampling_equals_trl(loss_type, level):
    """TIS against the sampler (TRL's vllm_importance_sampling_correction): the same weights, multiplied
    into the policy term (not the KL), give the same loss and gradient as TRL's."""
    from r1_lightning.generation.mismatch import truncated_importance_weights

    current, old, ref, advantages, mask = _rollout(seed=7)
    sampler = old + torch.randn(old.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.5
    weights = truncated_importance_weights(old, sampler, cap=2.0)
    assert (weights == 2.0).any() and (weights < 1.0).any()  # the cap binds somewhere, and weights vary
    assert_equal_to_trl(current, old, ref, advantages, mask, loss_type=loss_type, beta=0.04, clip=(0.2, 0.28),
                        level=level, is_weights=weights)  # fmt: skip


# TRL 1.16's other loss types, each with and without the KL and at both importance-sampling levels
NEW_LOSSES = [
    (loss_type, beta, level)
    for loss_type, beta, level in itertools.product(
        ["grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"], [0.0, 0.04], ["token", "sequence"]
    )
]


def assert_family_equal_to_trl(loss_type, beta, level, clip=(0.2, 0.28), params=None, seed=3, **extra):
    """Ours and TRL's on the same inputs for any loss type and its parameters, plus the masks."""
    from r1_lightning.training.losses import (
        LossParameters,
        high_entropy_mask,
        off_policy_sequence_mask,
    )

    current, old, ref, advantages, mask = _rollout(seed=seed)
    params = params or {}
    ours_in, theirs_in = current.clone().requires_grad_(True), current.clone().requires_grad_(True)
    masks = {}
    if extra.get("off_policy") is not None:
        masks["sequence_mask"] = off_policy_sequence_mask(
            advantages, ours_in, extra["sampling"], mask, extra["off_policy"]
        )
    if extra.get("top_entropy_quantile", 1.0) < 1.0:
        masks["token_mask"] = high_entropy_mask(extra["entropies"], mask, extra["top_entropy_quantile"])
    ours = grpo_loss(ours_in, old, advantages, mask, ref_logprobs=ref, beta=beta, epsilon_low=clip[0],
                     epsilon_high=clip[1], loss_type=loss_type, importance_sampling_level=level,
                     params=LossParameters(**params), **masks).loss  # fmt: skip
    trl_args = {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05, "vespo_k_pos": 2.0,
                "vespo_lambda_pos": 3.0, "vespo_k_neg": 3.0, "vespo_lambda_neg": 2.0, **params}  # fmt: skip
    theirs = trl_loss(theirs_in, old, ref, advantages, mask, loss_type=loss_type, beta=beta, eps_low=clip[0],
                      eps_high=clip[1], level=level, bias_kl=False, args=trl_args, **extra)  # fmt: skip
    assert_same_loss_and_gradient(ours, theirs, ours_in, theirs_in)


@pytest.mark.parametrize("loss_type,beta,level", NEW_LOSSES)
def test_every_trl_loss_type_equals_trl(loss_type, beta, level):
    clip = (0.2, 1.1) if loss_type == "cispo" else (0.2, 0.28)  # CISPO's epsilon_high is its ratio cap
    assert_family_equal_to_trl(loss_type, beta, level, clip=clip, seed=len(loss_type))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "luspo"])
def test_two_sided_clipping_delta_equals_trl(loss_type):
    assert_family_equal_to_trl(loss_type, 0.04, "token", params={"delta": 1.05})


@pytest.mark.parametrize("temperatures", [(0.5, 2.0), (3.0, 0.3)])
def test_sapo_temperatures_equal_trl(temperatures):
    params = {"sapo_temperature_pos": temperatures[0], "sapo_temperature_neg": temperatures[1]}
    assert_family_equal_to_trl("sapo", 0.0, "token", params=params)


def test_vespo_parameters_equal_trl():
    params = {"vespo_k_pos": 1.5, "vespo_lambda_pos": 2.0, "vespo_k_neg": 4.0, "vespo_lambda_neg": 1.0}
    assert_family_equal_to_trl("vespo", 0.04, "token", params=params)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo"])
def test_off_policy_mask_equals_trl(loss_type):
    """DeepSeek-V3.2's off-policy sequence mask drops some negative-advantage completions (not all)."""
    from r1_lightning.training.losses import off_policy_sequence_mask

    current, old, _, advantages, mask = _rollout(seed=3)
    sampling = old + torch.randn(old.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.6
    dropped = off_policy_sequence_mask(advantages, current, sampling, mask, 0.05)
    assert 0 < int((dropped == 0).sum()) < int((advantages < 0).sum()) + 1
    clip = (0.2, 1.1) if loss_type == "cispo" else (0.2, 0.28)
    assert_family_equal_to_trl(loss_type, 0.04, "token", clip=clip, off_policy=0.05, sampling=sampling)


@pytest.mark.parametrize("rho", [0.2, 0.5])
def test_top_entropy_quantile_equals_trl(rho):
    entropies = torch.rand(6, 7, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 3
    assert_family_equal_to_trl("dapo", 0.04, "token", entropies=entropies, top_entropy_quantile=rho)


def test_top_20_percent_of_tokens_by_entropy_carry_the_policy_gradient():
    """rho = 0.2: exactly the top 20% of the 20 completion tokens by entropy (4) get a non-zero gradient."""
    from r1_lightning.training.losses import high_entropy_mask

    mask = torch.ones(4, 5, dtype=torch.float64)
    entropy = torch.randperm(20, generator=torch.Generator().manual_seed(0)).double().view(4, 5)
    logprobs = torch.full((4, 5), -1.0, dtype=torch.float64, requires_grad=True)
    token_mask = high_entropy_mask(entropy, mask, 0.2)
    grpo_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64), mask,
              loss_type="dapo", token_mask=token_mask).loss.backward()  # fmt: skip
    carrying = logprobs.grad != 0
    assert int(carrying.sum()) == 4
    assert torch.equal(carrying, entropy >= 16)  # entropies 16..19 are the top 20%


@pytest.mark.parametrize("loss_type,rho", [("dapo", 1.0), ("grpo", 1.0), ("dr_grpo", 0.5)])
def test_entropy_bonus_equals_trl_in_loss_and_both_gradients(loss_type, rho):
    """entropy_coef (TRL's name): L - coef * mean H over the tokens carrying the policy gradient; the same
    loss and the same gradients in the log-probs and in the entropies."""
    current, old, ref, advantages, mask = _rollout(seed=4)
    entropy = torch.rand(6, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    ours_lp, theirs_lp = current.clone().requires_grad_(True), current.clone().requires_grad_(True)
    ours_h, theirs_h = entropy.clone().requires_grad_(True), entropy.clone().requires_grad_(True)
    from r1_lightning.training.losses import high_entropy_mask

    token_mask = high_entropy_mask(entropy, mask, rho) if rho < 1.0 else None
    ours = grpo_loss(ours_lp, old, advantages, mask, ref_logprobs=ref, beta=0.04, epsilon_low=0.2, epsilon_high=0.28,
                     loss_type=loss_type, token_mask=token_mask, entropy=ours_h, entropy_coef=0.05).loss  # fmt: skip
    theirs = trl_loss(theirs_lp, old, ref, advantages, mask, loss_type=loss_type, beta=0.04, eps_low=0.2,
                      eps_high=0.28, level="token", bias_kl=False, entropies=theirs_h, top_entropy_quantile=rho,
                      entropy_coef=0.05)  # fmt: skip
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_h.grad, theirs_h.grad, rtol=1e-12, atol=1e-14)
    assert ours_h.grad.abs().sum() > 0


def test_normalize_then_sum_equals_trls_advantage_formula():
    """GDPO advantages: the lines of TRL 1.16's _generate_and_score_completions for normalize_then_sum, run
    with TRL's own nanstd, on scores with a function that does not apply to some completions (NaN) and a
    completion no function scored."""
    from trl.trainer.utils import nanstd

    from r1_lightning.training.losses import normalize_then_sum_advantages

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 3, generator=g, dtype=torch.float64)
    scores[2, 1] = scores[7, 0] = float("nan")
    scores[5] = float("nan")
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    grouped = scores.view(-1, 4, 3)
    reward_k = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)
    rewards = (reward_k.view(-1, 3) * weights.unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(scores).all(dim=1)] = torch.nan
    trl = torch.nan_to_num((rewards - torch.nanmean(rewards)) / (nanstd(rewards).expand_as(rewards) + 1e-4), nan=0.0)
    ours = normalize_then_sum_advantages(scores, weights, 4)
    torch.testing.assert_close(ours, trl, rtol=1e-12, atol=1e-14)
    assert ours[5] == 0.0 and ours.abs().sum() > 0


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_vllm_importance_sampling_modes_equal_trl(mode):
    """TRL's four sampler corrections: the ratio as TRL 1.16's _generate_and_score_completions computes it
    (its lines, transcribed), and the loss with it through TRL's own _compute_loss."""
    import math

    from r1_lightning.generation.mismatch import sampler_importance_weights

    current, old, ref, advantages, mask = _rollout(seed=11)
    sampler = old + torch.randn(old.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.4
    sampler[1, 0] = float("nan")  # a token the engine gave no log-prob for
    clip_min, clip_max = (0.5, 2.0) if mode.startswith("token") else (0.7, 2.0)
    ours = sampler_importance_weights(old, sampler, mask, mode, clip_min, clip_max)
    diff = torch.nan_to_num((old - sampler) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        trl_ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    else:
        low, high = clip_min if clip_min is not None else -math.inf, clip_max if clip_max is not None else math.inf
        trl_ratio = ratio.masked_fill((ratio < low) | (ratio > high), value=0.0)
    torch.testing.assert_close(ours, trl_ratio, rtol=1e-12, atol=1e-14)
    assert ((ours == 0) | (ours == clip_max) | (ours == clip_min)).any()  # the clip or mask binds somewhere
    assert_equal_to_trl(current, old, ref, advantages, mask, loss_type="token", beta=0.04, clip=(0.2, 0.28),
                        level="token", is_weights=ours)  # fmt: skip
