"""Finite record sources for the supervised stages: SFT data, preference pairs, non-reasoning data.

A ``RecordSource`` returns a list of dicts (``records()``). Shipped: ``DatasetRecords`` (any file or
saved ``datasets`` folder, e.g. the rejection-sampling stage's output), ``ArithmeticCoTTask`` (the
tiny pipeline's generated cold-start chains of thought), ``NonReasoningTask`` (trivial queries that
get an answer without a chain of thought, as R1 mixed in) and ``ConcatRecords``.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

from r1_lightning.data.files import SkippedLine, location, read_rows
from r1_lightning.data.sources import BadRow, cell_text, count_skip
from r1_lightning.data.tasks import _held_out
from r1_lightning.errors import ConfigError

log = logging.getLogger(__name__)


def text_records(records: list[dict], columns: list[str], where: str) -> tuple[list[dict], Counter[str]]:
    """The records whose ``columns`` hold text or chat messages (a number becomes its text), and the
    count per reason of those skipped (``missing_value``: absent, null or blank; ``wrong_type``: an
    object, a list, a bool). The first few skipped are shown with their index; a column absent from the
    first record is a :class:`ConfigError` naming it.

    >>> kept, skipped = text_records([{"q": 1, "a": "x"}, {"q": "y", "a": None}, {"q": [1], "a": "z"}], ["q", "a"], "d")
    >>> kept, dict(skipped)
    ([{'q': '1', 'a': 'x'}], {'missing_value': 1, 'wrong_type': 1})
    """
    if not records:
        raise ConfigError(f"{where} has no records; give a file with at least one row")
    missing = [c for c in columns if c not in records[0]]
    if missing:
        raise ConfigError(
            f"{where} has no column {missing[0]!r} (it has {sorted(records[0])}); set the data's column names"
        )
    kept, skipped = [], Counter()
    for index, record in enumerate(records, start=1):
        try:
            for column in columns:
                value = cell_text(record.get(column), column, chat=True)
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise BadRow("missing_value", f"column {column!r} is {record.get(column)!r}")
                record = {**record, column: value}
        except BadRow as bad:
            count_skip(skipped, bad.reason, f"{where} record {index}: {bad}")
            continue
        kept.append(record)
    if skipped:
        log.warning("%s: skipped %d records (%s)", where, sum(skipped.values()), dict(skipped))
    return kept, skipped


class RecordSource:
    """Interface: ``records()`` -> list of dicts, all with the same keys."""

    def records(self) -> list[dict]:
        raise NotImplementedError


class DatasetRecords(RecordSource):
    """Records of a saved ``datasets`` folder (``save_to_disk``), a .jsonl/.json/.parquet/.csv file, or a
    hub dataset id.

    Args:
        path: folder written by ``Dataset.save_to_disk`` (what rejection sampling writes), a file (globs
            allowed), or a hub id.
        split: split to read (folders holding a ``DatasetDict``, and hub datasets).
        limit: read at most this many records (None = all).
    """

    def __init__(self, path: str, split: str = "train", limit: int | None = None) -> None:
        self.path, self.split, self.limit = path, split, limit

    def __repr__(self) -> str:
        return f"DatasetRecords(path={self.path!r}, split={self.split!r})"

    def records(self) -> list[dict]:
        import datasets

        path = Path(self.path)
        self.skipped_rows: Counter[str] = Counter()
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            data = datasets.load_from_disk(str(path))
        elif path.suffix in (".jsonl", ".json", ".parquet", ".csv") or "*" in self.path:
            return self._file_records()
        elif path.exists() or self.path.startswith((".", "/")):
            raise ConfigError(
                f"{self!r}: {self.path!r} is not a saved dataset folder or a .jsonl/.json/.parquet/.csv file"
                + ("" if path.exists() else " (it does not exist)")
            )
        else:
            data = datasets.load_dataset(self.path)
        if isinstance(data, datasets.DatasetDict):
            if self.split not in data:
                raise ValueError(f"{self!r}: no split {self.split!r}; it has {sorted(data)}")
            data = data[self.split]
        if len(data) == 0:
            raise ConfigError(f"{self!r} is empty")
        rows = data.to_list()
        return rows if self.limit is None else rows[: self.limit]

    def _file_records(self) -> list[dict]:
        """Rows of a user's file, read as every data file is (:mod:`r1_lightning.data.files`): lines that
        are not rows are skipped, counted in ``skipped_rows`` and the first few shown."""
        rows = []
        for item in read_rows(self.path):
            if isinstance(item, SkippedLine):
                count_skip(self.skipped_rows, item.reason, f"{location(item)}: {item.detail}")
                continue
            rows.append(item.values)
            if self.limit is not None and len(rows) >= self.limit:
                break
        if self.skipped_rows:
            log.warning("%r: skipped %d lines (%s)", self, sum(self.skipped_rows.values()), dict(self.skipped_rows))
        return rows


class ConcatRecords(RecordSource):
    """All records of several sources, in order (their columns must match)."""

    def __init__(self, sources: list[RecordSource]) -> None:
        self.sources = sources

    def records(self) -> list[dict]:
        return [record for source in self.sources for record in source.records()]


# The same reasoning in three languages: the cold-start data of the tiny pipeline mixes languages on
# purpose (as traces collected from an R1-Zero-like model do), so the language reward has work to do.
_COT_PHRASES = {
    "en": "We add {a} and {b}. {a}+{b}={s}.",
    "es": "Sumamos {a} y {b}. {a}+{b}={s}.",
    "fr": "Nous ajoutons {a} et {b}. {a}+{b}={s}.",
}


class ArithmeticCoTTask(RecordSource):
    """Generated long-CoT-style SFT records for addition (the tiny pipeline's cold-start data).

    Records: ``{"prompt": "12 + 7", "response": " <think>We add 12 and 7. 12+7=19.</think>
    <answer>19</answer>", "answer": "19", "language": "en"}``. Problems held out by
    ``ArithmeticTask(val_fraction=...)`` (the same hash) are never generated, so evaluation stays clean.

    Args:
        num_records: how many records.
        min_value / max_value: operand range.
        other_language_fraction: share of chains of thought written in Spanish or French instead
            of the target language (``language`` column stays ``en``).
        val_fraction: must equal the evaluation task's ``val_fraction``.
        seed: generation seed.

    >>> ArithmeticCoTTask(num_records=1, other_language_fraction=0.0).records()[0]["response"]
    ' <think>We add 17 and 14. 17+14=31.</think> <answer>31</answer>'
    """

    def __init__(
        self,
        num_records: int = 512,
        min_value: int = 0,
        max_value: int = 19,
        other_language_fraction: float = 0.0,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= other_language_fraction <= 1.0:
            raise ValueError(f"`other_language_fraction` must be in [0, 1], got {other_language_fraction}")
        self.num_records, self.min_value, self.max_value = num_records, min_value, max_value
        self.other_language_fraction, self.val_fraction, self.seed = other_language_fraction, val_fraction, seed

    def records(self) -> list[dict]:
        rng, rows = random.Random(f"{self.seed}-cot"), []
        while len(rows) < self.num_records:
            a, b = rng.randint(self.min_value, self.max_value), rng.randint(self.min_value, self.max_value)
            prompt = f"{a} + {b}"
            if _held_out(prompt, self.val_fraction):
                continue
            language = rng.choice(["es", "fr"]) if rng.random() < self.other_language_fraction else "en"
            thought = _COT_PHRASES[language].format(a=a, b=b, s=a + b)
            rows.append(
                {
                    "prompt": prompt,
                    "response": f" <think>{thought}</think> <answer>{a + b}</answer>",
                    "answer": str(a + b),
                    "language": "en",
                }
            )
        return rows


_GREETINGS = ("Hello", "Hi", "Good morning", "Hey")
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana")
_OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark", "old": "new"}


class NonReasoningTask(RecordSource):
    """Trivial queries (greetings, opposites, echoing a word) answered without a chain of thought.

    R1 mixes ~200k such non-reasoning samples into its second SFT and gives simple queries no CoT.
    Records: ``{"prompt", "response", "answer", "language"}`` with ``response`` = ``<answer>...</answer>``.

    >>> NonReasoningTask(num_records=2).records()[0]["response"].startswith(" <answer>")
    True
    """

    def __init__(self, num_records: int = 64, seed: int = 0) -> None:
        self.num_records, self.seed = num_records, seed

    def records(self) -> list[dict]:
        rng, rows = random.Random(f"{self.seed}-plain"), []
        for _ in range(self.num_records):
            kind = rng.randrange(3)
            if kind == 0:
                name = rng.choice(_NAMES)
                prompt, answer = f"{rng.choice(_GREETINGS)}, I am {name}", f"Hello {name}!"
            elif kind == 1:
                word = rng.choice(sorted(_OPPOSITES))
                prompt, answer = f"What is the opposite of {word}?", _OPPOSITES[word]
            else:
                word = rng.choice(sorted(_OPPOSITES.values()))
                prompt, answer = f"Repeat the word {word}", word
            rows.append(
                {"prompt": prompt, "response": f" <answer>{answer}</answer>", "answer": answer, "language": "en"}
            )
        return rows
