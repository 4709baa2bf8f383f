"""Scoring sampled completions the R1 way, one path for every evaluator: held-out validation inside GRPO
(``grpo_validation``), a model folder on a prompt set (``evaluator``, ``benchmark``), and a run's
before/after samples (``callbacks/run_report.py``).

``score_samples`` turns a sampled batch (``k`` consecutive completions per prompt) into per-completion
scores, format and length, and per-prompt pass@1 (averaged over the k) and maj@k. maj@k is the paper's
cons@k (majority vote over the k answers); this project names it maj@k everywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import comb
from typing import Any

from r1_lightning.generation.rollout import Generation
from r1_lightning.rewards import format_reward
from r1_lightning.rewards.contract import RewardState, generation_reward_inputs
from r1_lightning.text import extract_answer


@dataclass
class ScoredSamples:
    """A sampled batch, scored. Per completion: ``texts``, ``scores`` (None: not applicable),
    ``correct`` (score >= 1), ``formats`` (strict R1 format, 0/1), ``lengths`` (tokens). Per prompt:
    ``pass1`` (fraction of its k correct) and ``majority`` (maj@k, 0/1)."""

    texts: list[str]
    scores: list[float | None]
    correct: list[bool]
    formats: list[float]
    lengths: list[float]
    pass1: list[float]
    majority: list[float]


def score_samples(
    generation: Generation,
    prompts: list[str],
    columns: dict[str, list],
    k: int,
    reward: Any,
    state: RewardState | None = None,
    tokenizer: Any = None,
) -> ScoredSamples:
    """Score ``generation`` (rows: ``k`` consecutive completions of each prompt) with ``reward`` (TRL's
    reward contract: ``reward(completions=..., **columns)``); a score >= 1.0 counts as correct."""
    state = state or RewardState(0, 0, 0.0)
    completions, kwargs = generation_reward_inputs(generation, columns, state, prompts, tokenizer)
    scores = reward(completions=completions, **kwargs)
    pass1, majority = group_scores(generation.texts, scores, k)
    return ScoredSamples(
        texts=generation.texts,
        scores=scores,
        correct=[s is not None and s >= 1.0 for s in scores],
        formats=[float(f) for f in format_reward(generation.texts)],
        lengths=generation.trained_mask().sum(1).float().tolist(),  # sampled tokens, not tool responses
        pass1=pass1,
        majority=majority,
    )


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): ``1 - C(n - c, k) / C(n, k)``.

    With ``k = 1`` this is the fraction correct, the paper's "pass@1 averaged over k samples".

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> round(pass_at_k(4, 1, 2), 4)
    0.5
    >>> pass_at_k(4, 0, 4)
    0.0
    """
    if not 0 <= num_correct <= num_samples or not 1 <= k <= num_samples:
        raise ValueError(f"need 0 <= correct ({num_correct}) <= samples ({num_samples}) and 1 <= k <= samples")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def majority_vote_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """maj@k: is the most frequent extracted answer (ties: first seen) a correct one?

    Completions without an answer do not vote.

    >>> majority_vote_correct(["4", "5", "4", None], [True, False, True, False])
    True
    >>> majority_vote_correct(["5", "5", "4"], [False, False, True])
    False
    >>> majority_vote_correct([None, None], [False, False])
    False
    """
    normalized = [" ".join(a.split()) if a is not None else None for a in answers]
    votes = Counter(a for a in normalized if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in normalized if a is not None and votes[a] == top)
    return any(ok for a, ok in zip(normalized, correct, strict=True) if a == winner)


def group_scores(texts: list[str], scores: list[float | None], k: int) -> tuple[list[float], list[float]]:
    """Per prompt (``k`` consecutive completions each): pass@1 averaged over the k, and maj@k (0/1).

    A completion is correct when its score is >= 1.0 (``None``: not applicable, counted wrong).

    >>> group_scores(["<answer>4</answer>", "<answer>5</answer>"] * 2, [1.0, 0.0, 0.0, None], 2)
    ([0.5, 0.0], [1.0, 0.0])
    """
    correct = [s is not None and s >= 1.0 for s in scores]
    answers = [extract_answer(t) for t in texts]
    groups = [slice(i, i + k) for i in range(0, len(texts), k)]
    pass1 = [sum(correct[g]) / k for g in groups]
    majority = [float(majority_vote_correct(answers[g], correct[g])) for g in groups]
    return pass1, majority


def mean_ci95(values: list[float]) -> float:
    """Half-width of the normal 95% interval of the mean of ``values`` (per-prompt scores), treating the
    prompts as a sample of a larger problem population (problem-to-problem variation included).

    >>> round(mean_ci95([0.0, 1.0, 0.0, 1.0]), 4)
    0.5658
    """
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return 1.96 * (variance / n) ** 0.5


def sampling_ci95(pass1: list[float], num_samples: int) -> float:
    """Half-width of the 95% interval of pass@1 on *this* problem set, from sampling alone.

    Each problem's pass@1 ``p_i`` is the mean of ``k`` Bernoulli draws, whose variance is estimated
    without bias by ``p_i (1 - p_i) / (k - 1)``; the set's pass@1 is the mean over ``N`` problems, so

        CI95 = 1.96 * sqrt(sum_i p_i (1 - p_i) / (k - 1)) / N

    This is the interval that decides whether two models differ on the same benchmark (the question the
    pipeline report asks of its stages); :func:`mean_ci95` is the wider one for generalising to unseen
    problems of the same kind.

    >>> round(sampling_ci95([0.5, 0.5, 1.0, 0.0], 4), 4)  # two coin-flip problems, two settled ones
    0.2
    >>> sampling_ci95([1.0, 0.0], 8)
    0.0
    """
    if num_samples < 2 or not pass1:
        return 0.0
    variance = sum(p * (1.0 - p) / (num_samples - 1) for p in pass1)
    return 1.96 * variance**0.5 / len(pass1)
