"""Where prompt records come from: a hub dataset (streamed), local JSONL/JSON/CSV/Parquet, or a procedural task.

Every source yields records ``{"prompt": ..., "answer": ..., <extra columns>}``; extra columns reach
the reward functions as keyword arguments.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from r1_lightning.data.files import SkippedLine, as_text, buffer_shuffle, is_chat, location, read_rows
from r1_lightning.errors import ConfigError
from r1_lightning.text import last_boxed

log = logging.getLogger(__name__)

AnswerParser = Literal["gsm8k", "boxed", None]
OnBadRow = Literal["skip", "error"]
ROW_NUMBER = "__r1_lightning_row__"  # a row's 1-based place in its split, added while reading
#: how many skipped rows are shown in full (with file and row number); the rest are only counted
SHOWN_BAD_ROWS = 5


class BadRow(ValueError):
    """A row that cannot be trained on; ``reason`` is a short metric-friendly key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def cell_text(value: Any, column: str, chat: bool = False) -> Any:
    """A row's cell as text (a number becomes its text: ``12`` -> ``"12"``), or as chat messages where
    ``chat`` allows them; None stays None. Any other type (an object, a list, a bool) is a
    :class:`BadRow` ``wrong_type``.

    >>> cell_text(12, "answer"), cell_text([{"role": "user", "content": "hi"}], "prompt", chat=True)[0]["content"]
    ('12', 'hi')
    """
    if value is None or (chat and is_chat(value)):
        return value
    text = as_text(value)
    if text is None:
        raise BadRow("wrong_type", f"column {column!r} is a {type(value).__name__}, not text")
    return text


def count_skip(skipped: Counter[str], reason: str, message: str) -> None:
    """Count a skipped row under ``reason`` and show the first :data:`SHOWN_BAD_ROWS` of them in the log
    (``message`` says which row and why); the rest are only counted."""
    skipped[reason] += 1
    total = sum(skipped.values())
    if total <= SHOWN_BAD_ROWS:
        further = "; further skipped rows are only counted" if total == SHOWN_BAD_ROWS else ""
        log.warning("skipped %s (%s)%s", message, reason, further)


def is_empty_prompt(prompt: Any) -> bool:
    """No text to prompt with: None, blank text, or chat messages without content.

    >>> is_empty_prompt("  "), is_empty_prompt([{"role": "user", "content": ""}]), is_empty_prompt("1 + 2")
    (True, True, False)
    """
    if prompt is None:
        return True
    if isinstance(prompt, str):
        return not prompt.strip()
    if isinstance(prompt, list):
        return not any(str((m or {}).get("content") or "").strip() for m in prompt if isinstance(m, dict))
    return False


def parse_gsm8k_answer(solution: str) -> str:
    """GSM8K solutions end in ``#### 42``; the answer is what follows, commas dropped.

    >>> parse_gsm8k_answer("Natalia sold 48/2 = 24 clips... #### 1,072")
    '1072'
    """
    if "####" not in solution:
        raise BadRow("unparsable_answer", f"GSM8K answer has no '####' marker: {solution[-80:]!r}")
    return solution.split("####")[-1].strip().replace(",", "")


def parse_boxed_answer(solution: str) -> str:
    r"""MATH-style solutions: the answer is the last ``\boxed{...}``.

    >>> parse_boxed_answer(r"... so $x = \boxed{\frac{1}{2}}$.")
    '\\frac{1}{2}'
    """
    boxed = last_boxed(solution)
    if boxed is None:
        raise BadRow("unparsable_answer", f"solution has no \\boxed{{}} answer: {solution[-80:]!r}")
    return boxed


ANSWER_PARSERS = {"gsm8k": parse_gsm8k_answer, "boxed": parse_boxed_answer}


def first_distinct(
    records: Iterable[dict], count: int, keep: Callable[[dict], bool] | None = None, patience: int = 20_000
) -> list[dict]:
    """The first ``count`` records with distinct prompts (among those ``keep`` accepts), in the order drawn.

    Stops early once ``patience`` consecutive draws bring no new one: an endless generator of a small
    problem space (addition of 0-19 has 400 problems) has run out, and what was seen is all there is.

    >>> first_distinct(({"prompt": p} for p in "abacab"), 2)
    [{'prompt': 'a'}, {'prompt': 'b'}]
    >>> first_distinct(({"prompt": p} for p in "ab" * 50), 5, patience=10)
    [{'prompt': 'a'}, {'prompt': 'b'}]
    """
    seen: dict[str, dict] = {}
    stale = 0
    if count <= 0:
        return []
    for record in records:
        stale += 1
        prompt = str(record["prompt"])
        if (keep is None or keep(record)) and prompt not in seen:
            seen[prompt], stale = record, 0
        if len(seen) >= count or stale >= patience:
            break
    return list(seen.values())


class PromptSource:
    """Interface of a prompt source. ``iter_train`` may be endless; ``val_records`` is a fixed list."""

    seed: int = 0

    def iter_train(self, seed: int, epoch: int) -> Iterator[dict]:
        raise NotImplementedError

    def val_records(self, seed: int) -> list[dict]:
        raise NotImplementedError


class DatasetSource(PromptSource):
    """Records from a ``datasets`` dataset, with column mapping and an optional answer parser.

    Args:
        prompt_column: column holding the question (string or chat messages).
        answer_column: column holding the reference answer (or the full solution when
            ``answer_parser`` extracts it). ``None`` for datasets without one.
        answer_parser: ``gsm8k`` (text after ``####``), ``boxed`` (last ``\\boxed{}``), or none.
        extra_columns: more columns to pass to reward functions (all other columns by default).
        val_split: split used for validation; if None, the first ``val_size`` training records are
            held out (and never trained on).
        val_size: number of validation prompts (``None``: every row of the validation split, as a
            benchmark file is scored).
        shuffle_buffer: streaming shuffle buffer size (0 = no shuffling).
        on_bad_row: what to do with a row that cannot be used (empty prompt; missing, null or
            unparsable answer when ``answer_column`` is set): ``skip`` it (counted per reason as
            ``train/skipped_rows/<reason>``, the first few shown with file and row number) or stop
            with an ``error`` naming the row.
    """

    def __init__(
        self,
        prompt_column: str = "prompt",
        answer_column: str | None = "answer",
        answer_parser: AnswerParser = None,
        extra_columns: list[str] | None = None,
        val_split: str | None = None,
        val_size: int | None = 64,
        shuffle_buffer: int = 1000,
        on_bad_row: OnBadRow = "skip",
    ) -> None:
        if on_bad_row not in ("skip", "error"):
            raise ValueError(f"`on_bad_row` must be 'skip' or 'error', got {on_bad_row!r}")
        if answer_parser is not None and answer_parser not in ANSWER_PARSERS:
            raise ValueError(f"`answer_parser` must be one of {sorted(ANSWER_PARSERS)} or null, got {answer_parser!r}")
        self.prompt_column, self.answer_column, self.answer_parser = prompt_column, answer_column, answer_parser
        self.extra_columns, self.val_split, self.val_size = extra_columns, val_split, val_size
        self.shuffle_buffer, self.on_bad_row = shuffle_buffer, on_bad_row
        self.skipped_rows: Counter[str] = Counter()  # reason -> rows skipped (each row counted once)
        self._bad_rows_seen: set[tuple[str, int]] = set()

    # -- subclasses say where the data is --------------------------------------------------------
    def describe(self) -> str:
        raise NotImplementedError

    def load(self, split: str, streaming: bool) -> Any:
        raise NotImplementedError

    @property
    def train_split(self) -> str:
        return "train"

    # -- shared logic ------------------------------------------------------------------------------
    def _check_columns(self, columns: list[str] | None) -> None:
        if columns is None:  # some streamed datasets do not know their columns before the first row
            return
        wanted = [self.prompt_column] + ([self.answer_column] if self.answer_column else [])
        wanted += self.extra_columns or []
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise ConfigError(
                f"dataset {self.describe()} has no column {missing[0]!r} (it has {sorted(columns)}); "
                "set `prompt_column` / `answer_column` / `extra_columns` of the data source to match."
            )

    def to_record(self, row: dict) -> dict:
        """One dataset row as a prompt record; raises :class:`BadRow` for a row that cannot be used.

        The prompt is text or chat messages, the answer text; a number in either becomes its text
        (``12`` -> ``"12"``), and any other type (an object, a list, a bool) makes the row ``wrong_type``.
        A row missing the prompt or answer key counts as empty (the columns were checked on the first row).
        """
        prompt = cell_text(row.get(self.prompt_column), self.prompt_column, chat=True)
        if is_empty_prompt(prompt):
            raise BadRow("empty_prompt", f"column {self.prompt_column!r} is empty")
        record = {"prompt": prompt}
        answer = cell_text(row.get(self.answer_column), self.answer_column) if self.answer_column else None
        if self.answer_column and (answer is None or not answer.strip()):
            raise BadRow("missing_answer", f"column {self.answer_column!r} is {answer!r}")
        if answer is not None and self.answer_parser:
            answer = ANSWER_PARSERS[self.answer_parser](answer)
        record["answer"] = answer
        if self.answer_column and self.answer_column not in ("answer", "prompt"):
            # The column under its own name too: TRL's and open-r1's rewards read `solution`.
            record[self.answer_column] = row[self.answer_column]
        keep = self.extra_columns
        for key, value in row.items():
            if key not in (self.prompt_column, self.answer_column) and (keep is None or key in keep):
                record.setdefault(key, value)
        return record

    def _rows(self, split: str, seed: int, epoch: int, shuffle: bool) -> Iterator[dict]:
        dataset = self.load(split, streaming=True)
        self._check_columns(getattr(dataset, "column_names", None))
        # Number the rows before shuffling, so a skipped row is reported by its place in the file.
        dataset = dataset.map(lambda row, index: {ROW_NUMBER: index + 1}, with_indices=True)
        if shuffle and self.shuffle_buffer:
            # a streamed dataset shuffles through a buffer; a downloaded (map-style) one shuffles whole
            streamed = type(dataset).__name__ == "IterableDataset"
            buffer = {"buffer_size": self.shuffle_buffer} if streamed else {}
            dataset = dataset.shuffle(seed=seed + epoch, **buffer)
        empty = True
        for row in dataset:
            if empty:
                self._check_columns(list(row))
            empty = False
            number = row.pop(ROW_NUMBER)
            try:
                record = self.to_record(row)
            except BadRow as bad:
                self.bad_row(bad, split, number)
                continue
            yield record
        if empty:
            raise ValueError(f"dataset {self.describe()} split {split!r} is empty")

    def bad_row(self, bad: BadRow, split: str, number: int, where: str | None = None) -> None:
        """Count (and show the first few of) the rows that cannot be used, or stop on the first one.

        ``where`` names the row for the user (default: the split and the row's place in it)."""
        where = where or f"{self.describe()} split {split!r} row {number}"
        if self.on_bad_row == "error":
            raise ConfigError(
                f"{where}: {bad} ({bad.reason}); fix the row, or set the data source's "
                "`on_bad_row: skip` to train on the other rows"
            )
        if (split, where) in self._bad_rows_seen:  # the stream's next pass over the same file
            return
        self._bad_rows_seen.add((split, where))
        count_skip(self.skipped_rows, bad.reason, f"{where}: {bad}")

    def iter_train(self, seed: int, epoch: int) -> Iterator[dict]:
        held_out = {str(r["prompt"]) for r in self.val_records(seed)} if self.val_split is None else set()
        for record in self._rows(self.train_split, seed, epoch, shuffle=True):
            if str(record["prompt"]) not in held_out:
                yield record

    def val_records(self, seed: int) -> list[dict]:
        split = self.val_split or self.train_split
        cache = getattr(self, "_val_cache", None)
        if cache is None:
            cache = list(itertools.islice(self._rows(split, seed, 0, shuffle=False), self.val_size))
            self._val_cache = cache
        return cache


class HubSource(DatasetSource):
    """A Hugging Face hub dataset, streamed (``datasets.load_dataset(..., streaming=True)``).

    Args:
        path: dataset id, e.g. ``openai/gsm8k``.
        name: dataset configuration, e.g. ``main``.
        split: training split.
        streaming: stream instead of downloading the whole dataset first.
    """

    def __init__(
        self, path: str, name: str | None = None, split: str = "train", streaming: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.path, self.name, self.split, self.streaming = path, name, split, streaming

    def describe(self) -> str:
        return f"{self.path!r}" + (f" ({self.name})" if self.name else "")

    @property
    def train_split(self) -> str:
        return self.split

    def load(self, split: str, streaming: bool) -> Any:
        import os

        import datasets

        try:
            return datasets.load_dataset(self.path, self.name, split=split, streaming=self.streaming and streaming)
        except (ConnectionError, FileNotFoundError) as err:
            offline = any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
            hint = " HF_HUB_OFFLINE=1 is set: only datasets already in the local cache load." if offline else ""
            raise ConfigError(
                f"could not load hub dataset {self.describe()} split {split!r} (the data source's `path`): "
                f"{err}.{hint} For local files use r1_lightning.data.FileSource."
            ) from err


class FileSource(DatasetSource):
    """Local JSONL / JSON / CSV / Parquet files (a path or a glob), read row by row
    (:func:`r1_lightning.data.files.read_rows`): a line that cannot be a row is skipped, counted
    (``train/skipped_rows/malformed_line``, ``bad_encoding``; ``wrong_type`` for a prompt or answer of
    the wrong type) and the first few are shown with file and line number; training goes on.

    Args:
        path: training file(s).
        val_path: validation file(s); otherwise ``val_size`` training records are held out.
    """

    def __init__(self, path: str, val_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path, self.val_path = path, val_path
        if val_path is not None:
            self.val_split = "validation"

    def describe(self) -> str:
        return repr(self.path)

    def _rows(self, split: str, seed: int, epoch: int, shuffle: bool) -> Iterator[dict]:
        path = self.val_path if split == "validation" and self.val_path else self.path

        def file_records() -> Iterator[dict]:
            # Rows become records in file order, before the shuffle: a skipped line or row is reported as
            # soon as it is read (not when the shuffle buffer would let it out), and the first row checks
            # the columns, as a header would.
            checked = False
            for item in read_rows(path):
                where = location(item)
                if isinstance(item, SkippedLine):
                    self.bad_row(BadRow(item.reason, item.detail), split, item.line, where)
                    continue
                if not checked:
                    try:
                        self._check_columns(list(item.values))
                    except ConfigError as err:
                        raise ConfigError(f"{where}: {err}") from None
                    checked = True
                try:
                    yield self.to_record(item.values)
                except BadRow as bad:
                    self.bad_row(bad, split, item.line, where)

        records = file_records()
        if shuffle and self.shuffle_buffer:
            records = buffer_shuffle(records, self.shuffle_buffer, seed + epoch)
        yield from records
