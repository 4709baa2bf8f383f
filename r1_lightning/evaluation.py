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
    return any(ok for a, ok in zip(normalized, correct) if a == winner)
