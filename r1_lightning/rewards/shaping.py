"""The shaping rewards TRL and open-r1 users reach for, with their names and arguments, so their
configs and tests carry over: think/code format, reasoning steps, cosine-scaled and Kimi-1.5 length
rewards, n-gram repetition penalty, DAPO's soft overlong punishment, and TRL's reasoning accuracy.

Factories (``get_*``) return picklable callables with a ``__name__``, as TRL's do; in YAML they are
configured with ``factory_args`` (``{function: get_soft_overlong_punishment, factory_args: {...}}``).
Completions may be strings or chat messages; token-based rewards read ``completion_ids``.

Where the two peers differ, both are served: the length of a completion is its token count when
``completion_ids`` is given (TRL) and its character count otherwise (open-r1); the repetition penalty
counts token n-grams by default (TRL) and word n-grams with ``language: en | zh`` (open-r1; Chinese
is segmented with jieba).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from r1_lightning.rewards.accuracy import accuracy_reward
from r1_lightning.rewards.verify import trl_gold_parses
from r1_lightning.text import completion_text

_THINK_FORMAT = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL | re.MULTILINE)
_STEPS = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)")


def think_format_reward(completions: list, **kwargs: Any) -> list[float]:
    """1.0 when the completion opens with one ``<think>...</think>`` block (anything may follow), else
    0.0 (TRL's ``think_format_reward``).

    >>> think_format_reward(["<think>\\nThis is my reasoning.\\n</think>\\nThis is my answer.", "<think>no end"])
    [1.0, 0.0]
    """
    return [1.0 if _THINK_FORMAT.match(completion_text(c)) else 0.0 for c in completions]


def reasoning_steps_reward(completions: list, **kwargs: Any) -> list[float]:
    """Credit for visible step-by-step structure: "Step 1:", numbered lines, bullets, "First,",
    "Next,", ...; full credit from three markers on (open-r1's ``reasoning_steps_reward``).

    >>> reasoning_steps_reward(["Step 1: a\\nStep 2: b\\nStep 3: c", "First, a.\\nFinally, b.", "plain"])
    [1.0, 0.6666666666666666, 0.0]
    """
    return [min(1.0, len(_STEPS.findall(completion_text(c))) / 3) for c in completions]


def _lengths(completions: list, completion_ids: list[list[int]] | None) -> list[int]:
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len(completion_text(c)) for c in completions]


class _CosineScaledReward:
    __name__ = "cosine_scaled_reward"

    def __init__(
        self,
        max_len: int,
        min_value_wrong: float,
        max_value_wrong: float,
        min_value_correct: float,
        max_value_correct: float,
        extraction: str,
    ) -> None:
        self.max_len, self.extraction = max_len, extraction
        self.wrong, self.correct = (min_value_wrong, max_value_wrong), (min_value_correct, max_value_correct)

    def __call__(
        self,
        completions: list,
        solution: list | None = None,
        completion_ids: list | None = None,
        answer: list | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        references = answer if answer is not None else solution
        correct = accuracy_reward(completions, answer=answer, solution=solution, extraction=self.extraction)
        rewards: list[float | None] = []
        lengths = _lengths(completions, completion_ids)
        for is_correct, length, gold in zip(correct, lengths, references or [None] * len(correct), strict=True):
            # A reference math-verify cannot parse (TRL's test: its default parse finds nothing) makes the
            # row not applicable, as TRL's cosine reward does; plain-text references included.
            if is_correct is None or gold is None or not trl_gold_parses(str(gold)):
                rewards.append(None)
                continue
            progress = min(length / self.max_len, 1.0)  # past max_len the reward stays at its bound
            cosine = math.cos(progress * math.pi)
            # correct: max_value_correct when short -> min_value_correct at max_len;
            # wrong: min_value_wrong when short -> max_value_wrong at max_len (long wrong ones hurt less)
            start, end = (self.correct[1], self.correct[0]) if is_correct else (self.wrong[0], self.wrong[1])
            rewards.append(float(end + 0.5 * (start - end) * (1.0 + cosine)))
        return rewards


def get_cosine_scaled_reward(
    max_len: int = 1000,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    extraction: Literal["answer_tag_or_boxed", "math_verify"] = "answer_tag_or_boxed",
) -> _CosineScaledReward:
    r"""Correctness scaled by length on a cosine schedule (Yeo et al., *Demystifying Long CoT*):

    ``r = end + (start - end) * (1 + cos(pi * min(L / max_len, 1))) / 2`` with ``(start, end)`` =
    ``(max_value_correct, min_value_correct)`` for a correct answer (shorter is better) and
    ``(min_value_wrong, max_value_wrong)`` for a wrong one (a longer attempt is penalised less).
    ``L`` is the token count (``completion_ids``) or, without it, the character count. A reference
    that math-verify cannot parse gives ``None`` (TRL's rule, so plain text such as ``forty two`` too).
    ``extraction`` as in ``accuracy_reward`` (``math_verify`` for TRL's behaviour).

    >>> f = get_cosine_scaled_reward(max_len=100)
    >>> f([r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"], [r"\frac{1}{3}"] * 2, [[1] * 50, [1] * 50])
    [0.75, -0.75]
    """
    return _CosineScaledReward(
        max_len, min_value_wrong, max_value_wrong, min_value_correct, max_value_correct, extraction
    )


def len_reward(
    completions: list,
    solution: list | None = None,
    answer: list | None = None,
    completion_ids: list | None = None,
    **kwargs: Any,
) -> list[float]:
    """Kimi k1.5's length reward (open-r1's ``len_reward``): within the batch, with ``lambda = 0.5 -
    (len - min_len) / (max_len - min_len)``, a correct completion gets ``lambda`` and a wrong one
    ``min(0, lambda)``; all equal lengths give 0. Lengths in characters (tokens with
    ``completion_ids``). As in open-r1, a reference math-verify cannot parse counts as correct.

    >>> len_reward([r"\\boxed{4}", r"\\boxed{4} and more words", r"\\boxed{5}"], solution=["4"] * 3)
    [0.5, -0.5, 0.0]
    """
    references = answer if answer is not None else solution
    if references is None:
        raise TypeError("len_reward needs the reference as `solution` or `answer` (a dataset column)")
    correct = accuracy_reward(completions, answer=references)
    correctness = [
        True if not trl_gold_parses(str(gold)) else bool(is_correct)
        for gold, is_correct in zip(references, correct, strict=True)
    ]
    lengths = _lengths(completions, completion_ids)
    shortest, longest = min(lengths), max(lengths)
    if shortest == longest:
        return [0.0] * len(completions)
    rewards = []
    for length, is_correct in zip(lengths, correctness, strict=True):
        value = 0.5 - (length - shortest) / (longest - shortest)
        rewards.append(float(value if is_correct else min(0.0, value)))
    return rewards


def _word_ngrams(text: str, size: int, language: str) -> tuple[list[tuple], int]:
    if language == "zh":
        import jieba

        words = list(jieba.cut(text))
    else:
        words = text.lower().split()
    return list(zip(*[words[i:] for i in range(size)], strict=False)), len(words)


def _looks_like_ids(rows: list) -> bool:
    """Token id lists (``[[1, 2], []]``), as opposed to completions (strings or message lists)."""
    return all(isinstance(row, list) and all(isinstance(t, int) for t in row) for row in rows)


class _RepetitionPenalty:
    __name__ = "repetition_penalty_reward"

    def __init__(self, ngram_size: int, max_penalty: float, language: str | None) -> None:
        self.ngram_size, self.max_penalty, self.language = ngram_size, max_penalty, language

    def __call__(self, *args: Any, **kwargs: Any) -> list[float]:
        # TRL calls it with the token ids first, open-r1 with the completions first; the trainer passes
        # both by name.
        ids, completions = kwargs.get("completion_ids"), kwargs.get("completions")
        if args:
            if _looks_like_ids(args[0]):
                ids = args[0]
            else:
                completions = args[0]
        use_words = self.language is not None or ids is None
        rewards = []
        for index in range(len(completions if use_words else ids)):
            if use_words:
                ngrams, count = _word_ngrams(
                    completion_text(completions[index]), self.ngram_size, self.language or "en"
                )
            else:
                tokens = ids[index]
                ngrams, count = list(zip(*[tokens[i:] for i in range(self.ngram_size)], strict=False)), len(tokens)
            if count < self.ngram_size or not ngrams:
                rewards.append(0.0)
                continue
            scaling = 1 - len(set(ngrams)) / len(ngrams)
            rewards.append(scaling * self.max_penalty if scaling else 0.0)
        return rewards


def get_repetition_penalty_reward(
    ngram_size: int = 3, max_penalty: float = -1.0, language: Literal["en", "zh"] | None = None
) -> _RepetitionPenalty:
    """N-gram repetition penalty (Yeo et al., Appendix C.2): ``(1 - unique / total n-grams) * max_penalty``;
    0 with no repeated n-gram or fewer words/tokens than ``ngram_size``.

    Token n-grams of ``completion_ids`` by default (TRL); word n-grams with ``language`` (``en``:
    lower-cased whitespace split; ``zh``: jieba segmentation, open-r1's) or when no ids are given.

    >>> get_repetition_penalty_reward(2, -1.0)([[1, 2, 3, 4], [5, 5, 5, 5, 5]])
    [0.0, -0.75]
    >>> get_repetition_penalty_reward(2, -1.0, language="en")(["this this this this this"])
    [-0.75]
    """
    if max_penalty > 0:
        raise ValueError(f"max_penalty {max_penalty} should not be positive")
    if language not in (None, "en", "zh"):
        raise ValueError(f"repetition penalty: word splitting for language {language!r} is not implemented (en, zh)")
    if language == "zh":
        try:
            import jieba  # noqa: F401
        except ImportError as err:
            raise ValueError("language 'zh' segments words with jieba: pip install jieba") from err
    return _RepetitionPenalty(ngram_size, max_penalty, language)


class _SoftOverlongPunishment:
    __name__ = "soft_overlong_punishment_reward"

    def __init__(self, max_completion_len: int, soft_punish_cache: int) -> None:
        self.max_len, self.cache = max_completion_len, soft_punish_cache

    def __call__(self, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        rewards = []
        for ids in completion_ids:
            length = len(ids)
            if length <= self.max_len - self.cache:
                rewards.append(0.0)
            elif length <= self.max_len:
                rewards.append((self.max_len - self.cache - length) / self.cache)
            else:
                rewards.append(-1.0)
        return rewards


def get_soft_overlong_punishment(max_completion_len: int, soft_punish_cache: int) -> _SoftOverlongPunishment:
    """DAPO's soft overlong punishment (eq. 13): 0 up to ``max_completion_len - soft_punish_cache``
    tokens, then falling linearly to -1 at ``max_completion_len``, and -1 beyond.

    >>> get_soft_overlong_punishment(100, 20)([[1] * 50, [1] * 90, [1] * 110])
    [0.0, -0.5, -1.0]
    """
    if soft_punish_cache <= 0 or soft_punish_cache > max_completion_len:
        raise ValueError(f"soft_punish_cache must be in (0, max_completion_len]; got {soft_punish_cache}")
    return _SoftOverlongPunishment(max_completion_len, soft_punish_cache)


class _CodeFormat:
    __name__ = "code_format_reward"

    def __init__(self, language: str) -> None:
        self.language = language

    def __call__(self, completions: list, **kwargs: Any) -> list[float]:
        # A `language` column lets one run mix languages (open-r1's behaviour).
        languages = kwargs.get("language") or [self.language] * len(completions)
        rewards = []
        for completion, language in zip(completions, languages, strict=True):
            pattern = rf"^<think>\n.*?\n</think>\n<answer>\n.*?```{re.escape(language)}.*?```.*?\n</answer>$"
            rewards.append(1.0 if re.match(pattern, completion_text(completion), re.DOTALL | re.MULTILINE) else 0.0)
        return rewards


def get_code_format_reward(language: str = "python") -> _CodeFormat:
    """1.0 when the completion is ``<think>\\n...\\n</think>\\n<answer>\\n...```<language> code```...\\n</answer>``
    (open-r1's ``code_format_reward``; the per-row ``language`` column wins over ``language``).

    >>> get_code_format_reward()(["<think>\\nplan\\n</think>\\n<answer>\\n```python\\nx = 1\\n```\\n</answer>"])
    [1.0]
    """
    return _CodeFormat(language)


def reasoning_accuracy_reward(
    completions: list,
    solution: list | None = None,
    answer: list | None = None,
    reasoning_delimiters: list[str] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    r"""TRL's ``reasoning_accuracy_reward``: the answer counts only after the reasoning is closed (the
    text after the first of ``reasoning_delimiters``, default ``</think>``, that occurs); no closing
    delimiter scores 0.0; otherwise ``accuracy_reward`` with math-verify's extraction (``None`` for a
    reference it cannot parse).

    >>> reasoning_accuracy_reward([r"<think> x </think> \boxed{42}", r"<think> \boxed{42} </think> no"], ["42", "42"])
    [1.0, 0.0]
    """
    references = answer if answer is not None else solution
    if references is None:
        raise TypeError("reasoning_accuracy_reward needs the reference as `solution` or `answer`")
    delimiters = reasoning_delimiters or ["</think>"]
    finals: list[str | None] = []
    for completion in completions:
        text = completion_text(completion)
        delimiter = next((d for d in delimiters if d in text), None)
        finals.append(text.split(delimiter)[-1] if delimiter is not None else None)
    closed = [i for i, final in enumerate(finals) if final is not None]
    scores = accuracy_reward(
        [finals[i] for i in closed], answer=[references[i] for i in closed], extraction="math_verify"
    )
    rewards: list[float | None] = [0.0] * len(completions)
    for i, score in zip(closed, scores, strict=True):
        rewards[i] = score
    return rewards


#: the family by name, for the reward registry (factories are configured with ``factory_args``)
PEER_REWARDS = (
    think_format_reward,
    reasoning_steps_reward,
    len_reward,
    reasoning_accuracy_reward,
    get_cosine_scaled_reward,
    get_repetition_penalty_reward,
    get_soft_overlong_punishment,
    get_code_format_reward,
)
