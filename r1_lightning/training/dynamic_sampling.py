"""Dynamic sampling (DAPO; veRL's ``filter_groups`` with ``max_num_gen_batches``): a group whose G rewards are
all equal has zero advantage and carries no policy gradient, so it is dropped and more prompts are sampled
until the step has ``B`` groups that do carry signal, or ``max_num_gen_batches`` generation batches were
drawn (the first included).

Extra prompts come from :meth:`r1_lightning.data.datamodule.PromptDataModule.extra_batch`: a pass of the
training source keyed by the step and the draw, so a resumed step draws the same ones and the main prompt
stream (whose position checkpoints save) is untouched. Under data parallelism every rank draws the same
number of batches (the loop goes on while any rank still lacks groups: generation may be a collective,
under FSDP2 or vLLM), and every rank ends with exactly ``B`` groups, so ranks run the same micro-steps.
At the cap, the step is filled with the last draw's zero-signal groups (kept in order) and one warning is
given; ``train/dynamic_sampling/cap_hits`` counts such steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_warn

from r1_lightning.generation.rollout import Generation, concat_generations, select_rows


class Scored(NamedTuple):
    """Sampled and scored completions of some prompt records (B records x G rows, groups contiguous)."""

    batch: dict[str, list]  # the B records (columns as the data module gives them)
    generation: Generation
    rewards: torch.Tensor  # [B * G] weighted totals
    per_fn: dict[str, list]  # per reward function, B * G raw scores
    events: dict[str, int]  # reward timeouts and code runs while scoring
    reward_seconds: float


def signal_groups(rewards: torch.Tensor, group_size: int) -> list[int]:
    """Indices of the groups whose rewards are not all equal.

    >>> signal_groups(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.5]), 2)
    [0, 2]
    """
    grouped = rewards.view(-1, group_size)
    return [i for i, differs in enumerate((grouped.max(1).values > grouped.min(1).values).tolist()) if differs]


def take_groups(scored: Scored, groups: list[int], group_size: int) -> Scored:
    """The given groups of a scored batch (records, rows, rewards, scores), in that order."""
    rows = [g * group_size + j for g in groups for j in range(group_size)]
    return Scored(
        {key: [values[g] for g in groups] for key, values in scored.batch.items()},
        select_rows(scored.generation, rows),
        scored.rewards[rows],
        {name: [scores[i] for i in rows] for name, scores in scored.per_fn.items()},
        scored.events,
        scored.reward_seconds,
    )


def merge(parts: list[Scored], pad_id: int) -> Scored:
    events: dict[str, int] = {}
    for part in parts:
        for key, value in part.events.items():
            events[key] = events.get(key, 0) + value
    return Scored(
        {key: [v for part in parts for v in part.batch[key]] for key in parts[0].batch},
        concat_generations([part.generation for part in parts], pad_id),
        torch.cat([part.rewards for part in parts]),
        {name: [s for part in parts for s in part.per_fn[name]] for name in parts[0].per_fn},
        events,
        sum(part.reward_seconds for part in parts),
    )


def fill_with_signal(module: Any, first: Scored, cap: int) -> tuple[Scored, dict[str, float]]:
    """``first``'s groups with signal, topped up from extra draws (module docstring); the step's counts."""
    group, target = module.hparams.num_generations, len(next(iter(first.batch.values())))
    step, draws = module.trainer.global_step, 1
    useful = signal_groups(first.rewards, group)  # (of the last draw, for the filler at the cap)
    kept, last = [take_groups(first, useful, group)], first
    have, dropped = len(useful), target - len(useful)
    while draws < cap and _anyone_short(module, have < target):
        last = module.sample_and_score(module.trainer.datamodule.extra_batch(step, draws))
        draws += 1
        useful = signal_groups(last.rewards, group)
        dropped += len(last.rewards) // group - len(useful)
        if have < target:  # (a full rank samples along, for the collectives, and keeps nothing)
            kept.append(take_groups(last, useful[: target - have], group))
            have += min(len(useful), target - have)
    hit_cap = have < target
    if hit_cap:  # fill with the last draw's groups that carry no signal (the batch keeps its size)
        filler = [g for g in range(len(last.rewards) // group) if g not in useful]
        kept.append(take_groups(last, filler[: target - have], group))
        module.dynamic_sampling_cap_hits = getattr(module, "dynamic_sampling_cap_hits", 0) + 1
        if module.dynamic_sampling_cap_hits == 1:
            rank_zero_warn(
                f"dynamic sampling: step {step + 1} has {have} of {target} groups with reward signal after "
                f"max_num_gen_batches={cap} generation batches; filled with groups that carry none (counted as "
                "train/dynamic_sampling/cap_hits; raise max_num_gen_batches, or check that the rewards can differ)"
            )
    stats = {
        "dynamic_sampling/gen_batches": float(draws),
        "dynamic_sampling/dropped_groups": float(dropped),
        "dynamic_sampling/cap_hits": float(getattr(module, "dynamic_sampling_cap_hits", 0)),
    }
    merged = merge([part for part in kept if len(part.rewards)], module.tokenizer.pad_token_id)
    return merged, stats


def _anyone_short(module: Any, short: bool) -> bool:
    """Whether this rank or any other still lacks groups (every rank takes part: it is a collective)."""
    if module._trainer is None or module.trainer.world_size == 1:
        return short
    flag = torch.tensor(1.0 if short else 0.0, device=module.policy.device)
    return bool(module.trainer.strategy.reduce(flag, reduce_op="max") > 0)
