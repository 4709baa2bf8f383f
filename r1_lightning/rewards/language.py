"""Language-consistency reward (DeepSeek-R1, Nature version, eq. 7).

R1 found that RL chains of thought drift between languages; its fix is a reward equal to the
proportion of the chain-of-thought's words that are in the target language:

    Reward_language = Num(Words_target) / Num(Words)

Words and their languages come from lingua-language-detector (offline, maintained, handles Chinese,
which has no spaces): ``detect_multiple_languages_of`` splits a text into runs of one language and
counts each run's words. Decisions:

- Text is split into sentences first and each sentence is split into language runs: lingua's run
  detection over a whole paragraph lets one language swallow short sentences of another ("We add 3
  and 13. Sumamos 3 y 13." reads as all Spanish), per sentence it reads 60 % English.

- The chain of thought is the text inside ``<think>...</think>``; a completion without a closing
  ``</think>`` is scored as a whole (it is all reasoning).
- A chain of thought with no words at all (only numbers and symbols, "12+7=19") mixes no languages and
  scores 1.0: the reward must not push a model away from terse arithmetic.
- The target language is a per-record column (``language``: an ISO 639-1 code such as ``en`` or
  ``zh``), else ``default_language``.
- The detector only chooses among ``candidate_languages`` (default: the ten most common languages of
  the web); fewer candidates are faster and more accurate on short text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from r1_lightning.text import Completion, completion_text

DEFAULT_CANDIDATES = ("en", "zh", "es", "fr", "de", "ru", "ja", "pt", "it", "ko")
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_TAG = re.compile(r"</?(?:think|answer)>")
_SENTENCE_END = re.compile(r"(?<=[.!?;:\n\u3002\uff01\uff1f])\s*")


def chain_of_thought(text: str) -> str:
    """The reasoning part of a completion: inside ``<think>`` tags, else everything before ``</think>``.

    >>> chain_of_thought(" <think>We add.</think> <answer>4</answer>")
    'We add.'
    >>> chain_of_thought("We add. 2+2=4")
    'We add. 2+2=4'
    """
    found = _THINK.findall(text)
    if found:
        return " ".join(part.strip() for part in found)
    return _TAG.sub(" ", text.split("</think>")[0]).strip()


@functools.lru_cache(maxsize=8)
def language_detector(candidates: tuple[str, ...] = DEFAULT_CANDIDATES) -> Any:
    """A lingua detector restricted to ``candidates`` (ISO 639-1 codes), built once per process."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = []
    for code in candidates:
        try:
            languages.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())))
        except (AttributeError, ValueError) as err:
            raise ValueError(
                f"language_consistency_reward: unknown language code {code!r} in `candidate_languages` "
                "(use ISO 639-1 codes such as 'en', 'zh', 'es')"
            ) from err
    if len(languages) < 2:
        raise ValueError("language_consistency_reward: `candidate_languages` needs at least two languages")
    return LanguageDetectorBuilder.from_languages(*languages).build()


def target_word_fraction(text: str, target: str, candidates: Sequence[str] = DEFAULT_CANDIDATES) -> float:
    """Share of ``text``'s words detected as language ``target`` (1.0 for text without words).

    >>> target_word_fraction("We add twelve and seven to get nineteen.", "en")
    1.0
    >>> target_word_fraction("12 + 7 = 19", "en")
    1.0
    >>> target_word_fraction("We add 3 and 13. Sumamos 3 y 13.", "en")  # 3 English words of 5
    0.6
    """
    target = target.lower()
    candidates = tuple(dict.fromkeys([target, *(c.lower() for c in candidates)]))
    detector = language_detector(candidates)
    runs = [
        run
        for sentence in _SENTENCE_END.split(text)
        if sentence.strip()
        for run in detector.detect_multiple_languages_of(sentence)
    ]
    total = sum(run.word_count for run in runs)
    if total == 0:
        return 1.0
    in_target = sum(run.word_count for run in runs if run.language.iso_code_639_1.name.lower() == target)
    return in_target / total


def language_word_counts(text: str, candidates: Sequence[str] = DEFAULT_CANDIDATES) -> dict[str, int]:
    """Words of ``text`` per detected language (ISO 639-1 code), sentence by sentence as the reward reads.

    >>> language_word_counts("We add 3 and 13. Sumamos 3 y 13.", ["en", "es"])
    {'en': 3, 'es': 2}
    """
    detector = language_detector(tuple(dict.fromkeys(c.lower() for c in candidates)))
    counts: dict[str, int] = {}
    for sentence in _SENTENCE_END.split(text):
        if sentence.strip():
            for run in detector.detect_multiple_languages_of(sentence):
                code = run.language.iso_code_639_1.name.lower()
                counts[code] = counts.get(code, 0) + run.word_count
    return counts


def language_mix(texts: list[str], candidates: Sequence[str] = DEFAULT_CANDIDATES) -> dict[str, float]:
    """The language mix of the chains of thought in ``texts``: each candidate's share of all their words
    (every candidate is present, 0.0 included, so the keys are the same at every call; all zeros when
    the chains of thought have no words).

    >>> language_mix(["<think>We add the numbers.</think>", "<think>Sumamos los números.</think>"], ["en", "es"])
    {'en': 0.5714285714285714, 'es': 0.42857142857142855}
    """
    totals = dict.fromkeys((c.lower() for c in candidates), 0)
    for text in texts:
        for code, words in language_word_counts(chain_of_thought(text), candidates).items():
            totals[code] = totals.get(code, 0) + words
    all_words = sum(totals.values())
    return {code: words / all_words if all_words else 0.0 for code, words in totals.items()}


def language_consistency_reward(
    completions: list[Completion],
    language: list[str | None] | None = None,
    default_language: str = "en",
    candidate_languages: Sequence[str] = DEFAULT_CANDIDATES,
    **kwargs: Any,
) -> list[float]:
    """R1's language-consistency reward: the fraction of chain-of-thought words in the target language.

    ``language`` is the per-record column of target languages (ISO 639-1), else ``default_language``.
    An empty chain of thought scores 0; one without words (only numbers and symbols) scores 1.

    >>> language_consistency_reward(["<think>We add the two numbers.</think> <answer>4</answer>",
    ...                              "<think>Sumamos los dos números.</think> <answer>4</answer>"])
    [1.0, 0.0]
    """
    targets = language if language is not None else [None] * len(completions)
    if len(targets) != len(completions):
        raise ValueError(
            f"language_consistency_reward: the `language` column has {len(targets)} values "
            f"for {len(completions)} completions"
        )
    thoughts = [chain_of_thought(completion_text(c)) for c in completions]
    # No chain of thought at all earns nothing: otherwise an empty completion would score 1.0 here.
    return [
        target_word_fraction(thought, target or default_language, candidate_languages) if thought.strip() else 0.0
        for thought, target in zip(thoughts, targets, strict=True)
    ]
