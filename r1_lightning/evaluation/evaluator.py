"""``Evaluator``: scores an HF model folder on a held-out prompt set with R1's protocol:
``num_samples`` samples per prompt at T = 0.6, top-p 0.95; pass@1 averaged over them, maj@k, format
rate (strict ``<think>…</think><answer>…</answer>``), mean response length in tokens, and language
consistency (the language reward, averaged). The per-sample scoring is :func:`scoring.score_samples`,
shared with GRPO's validation; the formulas (pass@k, maj@k, intervals) are in :mod:`scoring`.
"""

from __future__ import annotations

import functools

import torch

from r1_lightning.data.sources import PromptSource
from r1_lightning.data.tasks import ArithmeticTask
from r1_lightning.data.templates import render_prompt
from r1_lightning.evaluation.scoring import mean_ci95, pass_at_k, sampling_ci95, score_samples
from r1_lightning.generation.rollout import SamplingConfig, isolated_rng
from r1_lightning.generation.sampler import TorchGenerator, sample_records
from r1_lightning.models.loading import load_policy
from r1_lightning.progress import Progress
from r1_lightning.rewards import resolve_reward
from r1_lightning.rewards.language import language_consistency_reward

METRICS = ("pass@1", "pass@1_ci95", "pass@1_ci95_problems", "pass@k", "maj@k", "format", "language", "length")


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
    and ``pass@<j>`` for each ``pass_at``, ``maj@k`` (majority vote over the k
    answers; the paper's cons@k), ``format``, ``language``, ``length`` (mean completion tokens),
    ``problems`` and ``samples``.
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
                scored = score_samples(generation, prompts, columns, self.k, self.reward)
                texts, pass1 = scored.texts, scored.pass1
                totals["pass@1"] += sum(pass1)
                per_prompt += pass1
                # unbiased pass@k (Chen et al.) from the k samples; with k = num_samples: any of them correct
                correct = [round(p * self.k) for p in pass1]
                for j, key in ((self.k, "pass@k"), *((j, f"pass@{j}") for j in self.pass_at)):
                    totals[key] += sum(pass_at_k(self.k, c, j) for c in correct)
                totals["maj@k"] += sum(scored.majority)
                languages = [lang or self.language for lang in columns.get("language", [None] * len(texts))]
                totals["format"] += sum(scored.formats) / self.k
                totals["language"] += sum(language_consistency_reward(texts, language=languages)) / self.k
                totals["length"] += sum(scored.lengths) / self.k
                progress.update(len(pass1), pass1=totals["pass@1"] / max(len(per_prompt), 1))
        metrics = {name: value / len(records) for name, value in totals.items()}
        metrics["pass@1_ci95"] = sampling_ci95(per_prompt, self.k)
        metrics["pass@1_ci95_problems"] = mean_ci95(per_prompt)
        metrics["problems"], metrics["samples"] = float(len(records)), float(len(records) * self.k)
        return metrics
