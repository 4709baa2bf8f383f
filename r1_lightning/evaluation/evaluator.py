"""Evaluation as the R1 paper does it: pass@1 averaged over k samples, pass@k, maj@k, and
``Evaluator``, which scores an HF model folder on a held-out prompt set with R1's protocol:
``num_samples`` samples per prompt at T = 0.6, top-p 0.95; pass@1 averaged over them, maj@k, format
rate (strict ``<think>…</think><answer>…</answer>``), mean response length in tokens, and language
consistency (the language reward, averaged).
"""

from __future__ import annotations

import functools
from collections import Counter
from math import comb

import torch

from r1_lightning.data.sources import PromptSource
from r1_lightning.data.tasks import ArithmeticTask
from r1_lightning.data.templates import render_prompt
from r1_lightning.generation.rollout import SamplingConfig, isolated_rng
from r1_lightning.generation.sampler import TorchGenerator, sample_records
from r1_lightning.models.loading import load_policy
from r1_lightning.progress import Progress
from r1_lightning.rewards import format_reward, resolve_reward
from r1_lightning.rewards.contract import RewardState, generation_reward_inputs
from r1_lightning.rewards.language import language_consistency_reward
from r1_lightning.text import extract_answer


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


METRICS = ("pass@1", "pass@1_ci95", "pass@1_ci95_problems", "pass@k", "maj@k", "format", "language", "length")


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


class Evaluator:
    """Held-out evaluation of a model folder.

    Args:
        source: prompt source; its held-out (validation) records are used, never its training ones.
        template: prompt template (as in training).
        num_samples: samples per prompt (k of pass@1-over-k and maj@k).
        sampling: sampling for evaluation (the paper: T=0.6, top-p 0.95).
        reward: reward whose score >= 1 means correct.
        language: target language of chains of thought (a record's ``language`` column wins).
        batch_size: prompts per generation batch.
        seed: sampling seed (the same for every stage, so stages are compared on equal draws).
        pass_at: the k of the extra ``pass@k`` metrics (unbiased estimator from the ``num_samples``
            draws, so each k must be <= ``num_samples``); ``pass@k`` with k = ``num_samples`` is always
            reported.

    Metrics: ``pass@1`` with ``pass@1_ci95`` (the interval from sampling on this problem set, see
    :func:`sampling_ci95`) and ``pass@1_ci95_problems`` (with problem-to-problem variation), ``pass@k``
    and ``pass@<j>`` for each ``pass_at``, ``maj@k`` (the paper's cons@k: majority vote over the k
    answers), ``format``, ``language``, ``length`` (mean completion tokens), ``problems`` and ``samples``.
    """

    def __init__(
        self,
        source: PromptSource | None = None,
        template: str = "r1_zero",
        num_samples: int = 4,
        sampling: SamplingConfig = SamplingConfig(
            temperature=0.6, top_p=0.95, max_new_tokens=48, stop_strings=("</answer>",)
        ),
        reward: str = "accuracy_reward",
        language: str = "en",
        batch_size: int = 64,
        seed: int = 0,
        pass_at: list[int] | None = None,
    ) -> None:
        self.pass_at = sorted(set(pass_at or []))
        bad = [k for k in self.pass_at if not 1 <= k <= num_samples]
        if bad:
            raise ValueError(
                f"evaluation.pass_at {bad}: pass@k from {num_samples} samples per problem needs 1 <= k <= "
                f"{num_samples}; raise evaluation.num_samples or drop those k"
            )
        self.source = source if source is not None else ArithmeticTask(max_value=19)
        self.template, self.k, self.batch_size, self.seed = template, num_samples, batch_size, seed
        self.sampling = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**dict(sampling))
        self.reward, self.language = resolve_reward(reward), language

    @torch.no_grad()
    def __call__(self, model_path: str, label: str | None = None) -> dict[str, float]:
        """Metrics of the model folder ``model_path``; progress lines (with an ETA) say ``label``."""
        policy, tokenizer = load_policy(model_path)
        policy = policy.to("cuda" if torch.cuda.is_available() else "cpu")
        generator = TorchGenerator(tokenizer)
        records = self.source.val_records(self.seed)
        if not records:
            raise ValueError(f"evaluation: {self.source!r} has no held-out records (set its val_size)")
        totals = dict.fromkeys([*METRICS, *(f"pass@{j}" for j in self.pass_at)], 0.0)
        per_prompt: list[float] = []  # pass@1 of each prompt, for the interval
        render = functools.partial(render_prompt, template=self.template, tokenizer=tokenizer)
        progress = Progress(
            len(records), f"{label or model_path}: evaluation, problems x {self.k} samples", every=self.batch_size
        )
        with progress, isolated_rng(policy.device, self.seed):
            for _, prompts, columns, generation in sample_records(
                generator, policy, records, render, self.k, self.sampling, self.batch_size
            ):
                texts = generation.texts
                completions, kwargs = generation_reward_inputs(generation, columns, RewardState(0, 0, 0.0), prompts)
                pass1, majority = group_scores(texts, self.reward(completions=completions, **kwargs), self.k)
                totals["pass@1"] += sum(pass1)
                per_prompt += pass1
                # unbiased pass@k (Chen et al.) from the k samples; with k = num_samples: any of them correct
                correct = [round(p * self.k) for p in pass1]
                for j, key in ((self.k, "pass@k"), *((j, f"pass@{j}") for j in self.pass_at)):
                    totals[key] += sum(pass_at_k(self.k, c, j) for c in correct)
                totals["maj@k"] += sum(majority)
                languages = [lang or self.language for lang in columns.get("language", [None] * len(texts))]
                totals["format"] += sum(format_reward(texts)) / self.k
                totals["language"] += sum(language_consistency_reward(texts, language=languages)) / self.k
                totals["length"] += float(generation.completion_mask.sum()) / self.k
                progress.update(len(pass1), pass1=totals["pass@1"] / max(len(per_prompt), 1))
        metrics = {name: value / len(records) for name, value in totals.items()}
        metrics["pass@1_ci95"] = sampling_ci95(per_prompt, self.k)
        metrics["pass@1_ci95_problems"] = mean_ci95(per_prompt)
        metrics["problems"], metrics["samples"] = float(len(records)), float(len(records) * self.k)
        return metrics
