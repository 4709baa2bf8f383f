"""Evaluation metrics of the R1 paper: pass@1 averaged over k samples, pass@k, and maj@k."""

from __future__ import annotations

from collections import Counter
from math import comb


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
    from r1_lightning.rewards import extract_answer

    correct = [s is not None and s >= 1.0 for s in scores]
    answers = [extract_answer(t) for t in texts]
    groups = [slice(i, i + k) for i in range(0, len(texts), k)]
    pass1 = [sum(correct[g]) / k for g in groups]
    majority = [float(majority_vote_correct(answers[g], correct[g])) for g in groups]
    return pass1, majority
