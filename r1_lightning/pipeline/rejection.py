"""Rejection sampling (DeepSeek-R1, stage 3): turn an RL checkpoint into clean SFT data.

From the checkpoint, sample ``samples_per_prompt`` completions per prompt and keep a completion only if
it is **correct** (rule-based verification; or a generative judge given the reference answer, for
answers the rules cannot verify) and it passes the readability **filters** R1 names: no mixed-language
chain of thought, no over-long paragraphs, no code blocks (each configurable). Exact duplicates are
dropped and at most ``keep_per_prompt`` completions are kept per prompt. Non-reasoning records (R1:
writing, factual QA, ...; simple queries without a chain of thought) are then mixed in.

Output (``output_dir``): ``dataset/`` (``datasets.load_from_disk``; columns ``prompt``, ``response``,
``answer``, ``language``, ``kind``), ``stats.json`` (kept and dropped counts per reason) and
``samples.jsonl`` (every completion with its verdict, for inspection). Each completion is dropped for
the *first* reason that applies, in the order of ``DROP_REASONS``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from r1_lightning.data.records import RecordSource
from r1_lightning.data.sources import PromptSource, first_distinct
from r1_lightning.data.tasks import ArithmeticTask
from r1_lightning.data.templates import render_prompt
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.sampler import TorchGenerator, sample_records
from r1_lightning.models.loading import load_policy
from r1_lightning.progress import Progress
from r1_lightning.rewards import format_reward, resolve_reward
from r1_lightning.rewards.language import DEFAULT_CANDIDATES, chain_of_thought, target_word_fraction

log = logging.getLogger(__name__)

DROP_REASONS = (
    "incorrect",
    "unverifiable",
    "bad_format",
    "mixed_language",
    "long_paragraph",
    "code_block",
    "duplicate",
    "over_prompt_cap",
)
_CODE_BLOCK = re.compile(r"```")
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class RejectionFilters:
    """Readability filters of kept chains of thought (None / False switches one off).

    Args:
        require_format: keep only ``<think>...</think><answer>...</answer>`` completions.
        min_language_consistency: minimum share of chain-of-thought words in the target language.
        max_paragraph_words: longest paragraph (blank-line separated) allowed, in words.
        drop_code_blocks: drop completions containing a Markdown code block.
        dedupe: drop exact duplicates (whitespace-normalised) of a completion kept for the same prompt.
    """

    require_format: bool = True
    min_language_consistency: float | None = 0.99
    max_paragraph_words: int | None = 200
    drop_code_blocks: bool = True
    dedupe: bool = True


def drop_reason(text: str, filters: RejectionFilters, language: str, candidates=DEFAULT_CANDIDATES) -> str | None:
    """The first readability filter ``text`` fails, or None (correctness is checked before).

    >>> f = RejectionFilters()
    >>> drop_reason("<think>We add.</think> <answer>4</answer>", f, "en") is None
    True
    >>> drop_reason("<think>Sumamos los números.</think> <answer>4</answer>", f, "en")
    'mixed_language'
    >>> drop_reason("<think>```print(4)```</think> <answer>4</answer>", f, "en")
    'code_block'
    """
    if filters.require_format and format_reward([text])[0] < 1.0:
        return "bad_format"
    thought = chain_of_thought(text)
    if (
        filters.min_language_consistency is not None
        and target_word_fraction(thought, language, candidates) < filters.min_language_consistency
    ):
        return "mixed_language"
    if filters.max_paragraph_words is not None and any(
        len(p.split()) > filters.max_paragraph_words for p in _PARAGRAPH.split(thought)
    ):
        return "long_paragraph"
    if filters.drop_code_blocks and _CODE_BLOCK.search(text):
        return "code_block"
    return None


class GenerativeJudge:
    """A causal LM asked whether a response matches the reference answer (R1 used DeepSeek-V3).

    The verdict compares the judge's log-likelihood of " yes" and " no" after a fixed question.
    """

    QUESTION = (
        "Question: {prompt}\nReference answer: {answer}\nResponse: {response}\n"
        "Is the response's final answer equivalent to the reference answer? Answer yes or no.\nAnswer:"
    )

    def __init__(self, model: str, dtype: str = "float32") -> None:
        self.model, self.tokenizer = load_policy(model, dtype)
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def _loglik(self, context: str, continuation: str) -> float:
        ids = self.tokenizer(context + continuation, return_tensors="pt", add_special_tokens=False)["input_ids"]
        start = len(self.tokenizer(context, add_special_tokens=False)["input_ids"])
        device = next(self.model.parameters()).device
        logprobs = torch.log_softmax(self.model(ids.to(device)).logits[0, :-1].float(), -1)
        targets = ids[0, 1:].to(device)
        return float(logprobs[start - 1 :].gather(-1, targets[start - 1 :, None]).sum())

    def __call__(self, prompt: str, answer: str, response: str) -> bool:
        context = self.QUESTION.format(
            prompt=prompt, answer=answer, response=response.rsplit("</think>", 1)[-1].strip()
        )
        return self._loglik(context, " yes") > self._loglik(context, " no")


class RejectionSampler:
    """Sample from a checkpoint, keep correct and readable completions, mix in non-reasoning data.

    Args:
        model: the checkpoint to sample from (HF folder, hub id, ``tiny:*``).
        source: prompt source (``ArithmeticTask``, ``HubSource``, ``FileSource``, ...); its training
            split is read, never its held-out one.
        template: prompt template (as in RL).
        num_prompts: distinct prompts to sample for; None = every distinct prompt of the training split
            (a finite source's whole split; an endless generator's until new prompts stop coming).
        samples_per_prompt: completions per prompt (k).
        keep_per_prompt: most completions kept per prompt.
        sampling: sampling settings (R1 samples at its RL temperature).
        batch_size: prompts per generation batch.
        verifier: reward function whose score >= 1 means correct (None scores mean "cannot verify").
        judge: causal LM used as a generative judge for completions the verifier cannot verify
            (None = drop them as ``unverifiable``).
        filters: readability filters.
        language: target language of chains of thought (a per-record ``language`` column wins).
        non_reasoning: records mixed in without chains of thought (``NonReasoningTask``, files, ...).
        output_dir: where ``dataset/``, ``stats.json`` and ``samples.jsonl`` are written.
        dtype: model dtype.
        seed: sampling and prompt-order seed.
        progress_label: what the progress lines (prompts done, kept so far, ETA) start with.
    """

    def __init__(
        self,
        model: str = "tiny:arithmetic",
        source: PromptSource | None = None,
        template: str = "r1_zero",
        num_prompts: int | None = 128,
        samples_per_prompt: int = 4,
        keep_per_prompt: int = 1,
        sampling: SamplingConfig = SamplingConfig(temperature=1.0, max_new_tokens=64),
        batch_size: int = 16,
        verifier: str = "accuracy_reward",
        judge: str | None = None,
        filters: RejectionFilters = RejectionFilters(),
        language: str = "en",
        non_reasoning: RecordSource | None = None,
        output_dir: str = "rejection_sampling",
        dtype: str = "float32",
        seed: int = 0,
        progress_label: str = "rejection sampling",
    ) -> None:
        self.progress_label = progress_label
        if samples_per_prompt < 1 or keep_per_prompt < 1 or (num_prompts is not None and num_prompts < 1):
            raise ValueError("`num_prompts` (or None), `samples_per_prompt` and `keep_per_prompt` must be >= 1")
        self.model_name, self.source = model, source if source is not None else ArithmeticTask(max_value=19)
        self.template, self.num_prompts, self.k = template, num_prompts, samples_per_prompt
        self.keep_per_prompt, self.batch_size, self.seed = keep_per_prompt, batch_size, seed
        self.sampling = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**dict(sampling))
        self.filters = filters if isinstance(filters, RejectionFilters) else RejectionFilters(**dict(filters))
        self.verifier, self.judge_model, self.language = resolve_reward(verifier), judge, language
        self.non_reasoning, self.output_dir, self.dtype = non_reasoning, Path(output_dir), dtype

    def prompts(self) -> list[dict]:
        """The first ``num_prompts`` distinct training prompts of the source (all of them for None)."""
        # (an endless source of a small problem space runs out: then every distinct prompt it has)
        wanted = self.num_prompts if self.num_prompts is not None else sys.maxsize
        seen = first_distinct(self.source.iter_train(self.seed, 0), wanted)
        if self.num_prompts is not None and len(seen) < self.num_prompts:
            log.warning(
                "rejection sampling: the prompt source has %d distinct training prompts, fewer than "
                "num_prompts=%d; sampling all of them",
                len(seen),
                self.num_prompts,
            )
        if not seen:
            raise ValueError(f"rejection sampling: the prompt source {self.source!r} yielded no records")
        return seen

    @torch.no_grad()
    def run(self) -> dict[str, Any]:
        import datasets

        started = time.perf_counter()
        torch.manual_seed(self.seed)
        policy, tokenizer = load_policy(self.model_name, self.dtype)
        policy = policy.to("cuda" if torch.cuda.is_available() else "cpu")
        judge = GenerativeJudge(self.judge_model, self.dtype) if self.judge_model else None
        generator = TorchGenerator(tokenizer)
        records = self.prompts()
        stats = {
            "prompts": len(records),
            "samples": 0,
            "kept": 0,
            "prompts_with_kept": 0,
            "dropped": dict.fromkeys(DROP_REASONS, 0),
            "judge_calls": 0,
        }
        kept_rows: list[dict] = []
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "samples.jsonl", "w") as samples_file:
            render = functools.partial(render_prompt, template=self.template, tokenizer=tokenizer)
            progress = Progress(len(records), f"{self.progress_label}: prompts x {self.k} samples")
            for chunk, prompts, columns, generation in sample_records(
                generator, policy, records, render, self.k, self.sampling, self.batch_size
            ):
                texts = generation.texts
                scores = self.verifier(completions=texts, prompts=prompts, **columns)
                for i, record in enumerate(chunk):
                    kept_here: set[str] = set()
                    for j in range(i * self.k, (i + 1) * self.k):
                        reason = self._verdict(texts[j], scores[j], record, judge, kept_here, stats)
                        stats["samples"] += 1
                        samples_file.write(
                            json.dumps(
                                {
                                    "prompt": record["prompt"],
                                    "completion": texts[j],
                                    "score": scores[j],
                                    "dropped": reason,
                                }
                            )
                            + "\n"
                        )
                        if reason is not None:
                            stats["dropped"][reason] += 1
                            continue
                        kept_here.add(" ".join(texts[j].split()))
                        kept_rows.append(
                            {
                                "prompt": str(record["prompt"]),
                                "response": texts[j],
                                "answer": str(record.get("answer", "")),
                                "language": record.get("language") or self.language,
                                "kind": "reasoning",
                            }
                        )
                    stats["prompts_with_kept"] += bool(kept_here)
                progress.update(len(chunk), kept=len(kept_rows))
            progress.close()
        stats["kept"] = len(kept_rows)
        non_reasoning = self._non_reasoning_rows()
        stats["non_reasoning"] = len(non_reasoning)
        if not kept_rows and not non_reasoning:
            raise RuntimeError(f"rejection sampling kept nothing from {stats['samples']} samples: {stats['dropped']}")
        datasets.Dataset.from_list(kept_rows + non_reasoning).save_to_disk(str(self.output_dir / "dataset"))
        stats.update(
            seconds=round(time.perf_counter() - started, 1),
            filters=asdict(self.filters),
            keep_rate=stats["kept"] / max(stats["samples"], 1),
        )
        (self.output_dir / "stats.json").write_text(json.dumps(stats, indent=2))
        log.info(
            "rejection sampling: kept %d of %d samples (%s); %d non-reasoning records mixed in",
            stats["kept"],
            stats["samples"],
            stats["dropped"],
            len(non_reasoning),
        )
        return stats

    def _verdict(
        self,
        text: str,
        score: float | None,
        record: dict,
        judge: GenerativeJudge | None,
        kept_here: set[str],
        stats: dict,
    ) -> str | None:
        if score is None:
            if judge is None or not record.get("answer"):
                return "unverifiable"
            stats["judge_calls"] += 1
            score = 1.0 if judge(str(record["prompt"]), str(record["answer"]), text) else 0.0
        if score < 1.0:
            return "incorrect"
        reason = drop_reason(text, self.filters, record.get("language") or self.language)
        if reason is not None:
            return reason
        if self.filters.dedupe and " ".join(text.split()) in kept_here:
            return "duplicate"
        if len(kept_here) >= self.keep_per_prompt:
            return "over_prompt_cap"
        return None

    def _non_reasoning_rows(self) -> list[dict]:
        if self.non_reasoning is None:
            return []
        rows = []
        for record in self.non_reasoning.records():
            if "prompt" not in record or "response" not in record:
                raise ValueError(f"non-reasoning records need 'prompt' and 'response' columns; got {sorted(record)}")
            rows.append(
                {
                    "prompt": str(record["prompt"]),
                    "response": str(record["response"]),
                    "answer": str(record.get("answer", "")),
                    "language": record.get("language") or self.language,
                    "kind": "non_reasoning",
                }
            )
        return rows
