"""Reading a user's data file as it comes: one row at a time, every line that cannot be a row skipped
with its line number and a reason, and a file that cannot be read at all one clean error naming it.

Every place that reads a user's file goes through :func:`read_rows`: training and validation sources
(``FileSource``), benchmark files (``evaluate --benchmark``), and the finite record files of the
supervised stages (``DatasetRecords``: SFT data, rejection-sampling inputs, preference pairs).

What is skipped, and under which reason (``train/skipped_rows/<reason>`` in the logs):

- ``malformed_line``: a JSON Lines line that does not parse, or parses to something other than an object
  (a number, a list); a JSON array element that is not an object; a CSV line with the wrong number of
  fields, or with a quote that never closes (only that line is dropped: the rows after it are read).
- ``bad_encoding``: a line that is not UTF-8.

Read as normal: a UTF-8 byte-order mark, CRLF line ends, blank lines, a last line without a newline.
Values of the wrong type (``wrong_type``) are judged per column by the reader of the rows
(``DatasetSource.to_record``), which knows which column is the prompt and which the answer.

JSON Lines and CSV are streamed line by line, so memory stays flat however large the file. A JSON array
(``.json``) is parsed whole (a cut-short array is one clean error); a ``.json`` file holding JSON Lines is
read as JSON Lines. Parquet is read one record batch at a time.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1_lightning.errors import ConfigError, MissingPathError

#: the suffixes read here, and the format each one names
FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
#: a quoted CSV field may span lines; past this many, an open quote is taken for an unterminated one
MAX_CSV_RECORD_LINES = 200


class DataFileError(ConfigError):
    """A data file or path that cannot be read at all; the message names it and what would fix it."""


@dataclass(frozen=True)
class Row:
    """One row of a file: its values and where it is (``line``: the 1-based line of a text file, or the
    1-based row of a Parquet file or element of a JSON array, as ``unit`` says)."""

    file: str
    line: int
    values: dict[str, Any]
    unit: str = "line"


@dataclass(frozen=True)
class SkippedLine:
    """A line that is not a row: where it is, why (a ``train/skipped_rows`` reason) and what it held."""

    file: str
    line: int
    reason: str
    detail: str
    unit: str = "line"


def location(item: Row | SkippedLine) -> str:
    """Where a row is, as its user would look for it: a line of a text file, an element of a JSON array,
    a row of a Parquet file.

    >>> location(Row("a.jsonl", 3, {})), location(Row("a.parquet", 3, {}, unit="row"))
    ("data file 'a.jsonl' line 3", "data file 'a.parquet' row 3")
    """
    return f"data file {item.file!r} {item.unit} {item.line}"


def data_files(path: str) -> list[str]:
    """The files ``path`` names (a file or a glob), sorted; a clean error when there are none or the
    suffix is not one of :data:`FORMATS`."""
    files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    if not files or not Path(files[0]).exists():
        where = f" (relative paths start at {Path.cwd()})" if not Path(path).is_absolute() else ""
        raise MissingPathError(f"data file {path!r} does not exist{where}; check the data source's path")
    for file in files:
        if Path(file).is_dir():
            raise DataFileError(f"data path {file!r} is a folder; name the file(s) in it, e.g. {file}/*.jsonl")
        if Path(file).suffix.lower() not in FORMATS:
            raise DataFileError(
                f"data file {file!r}: unknown extension {Path(file).suffix!r}; use one of {sorted(FORMATS)}"
            )
    return files


def read_rows(path: str) -> Iterator[Row | SkippedLine]:
    """Every row of the file(s) at ``path``, in order, and a :class:`SkippedLine` for each line that is not
    one. Raises :class:`DataFileError` for a file that cannot be read at all (missing, empty, corrupt)."""
    readers = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet}
    for file in data_files(path):
        yielded = False
        for item in readers[FORMATS[Path(file).suffix.lower()]](file):
            yielded = True
            yield item
        if not yielded:
            raise DataFileError(f"data file {file!r} is empty (no rows); give a file with at least one row")


def _lines(file: str) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, line without its end)`` of a file, BOM and CR removed, blank lines left out."""
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\n").rstrip(b"\r")
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            if line.strip():
                yield number, line


def _decode(file: str, number: int, line: bytes) -> str | SkippedLine:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        return SkippedLine(
            file, number, "bad_encoding", f"not UTF-8 (byte {line[err.start]:#04x} at column {err.start + 1})"
        )


def _object_or_skip(file: str, number: int, value: Any, what: str, unit: str = "line") -> Row | SkippedLine:
    if isinstance(value, dict):
        return Row(file, number, value, unit)
    detail = f"{what} is a JSON {type(value).__name__}, not an object"
    return SkippedLine(file, number, "malformed_line", detail, unit)


def _jsonl(file: str) -> Iterator[Row | SkippedLine]:
    for number, line in _lines(file):
        text = _decode(file, number, line)
        if isinstance(text, SkippedLine):
            yield text
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            yield SkippedLine(file, number, "malformed_line", f"not valid JSON ({err.msg} at column {err.colno})")
            continue
        yield _object_or_skip(file, number, value, "the line")


def _json(file: str) -> Iterator[Row | SkippedLine]:
    with open(file, "rb") as handle:
        head = handle.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    if not head.startswith(b"["):  # JSON Lines under a .json name (as datasets reads it too)
        yield from _jsonl(file)
        return
    try:
        values = json.loads(Path(file).read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataFileError(f"data file {file!r} is not UTF-8 (byte offset {err.start}); re-save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataFileError(
            f"data file {file!r}: not a valid JSON array ({err.msg} at line {err.lineno}, column {err.colno}); "
            "a file cut short or edited by hand? Fix it there, or convert it to JSON Lines (.jsonl), one row "
            "per line, so that a bad line costs only that row"
        ) from None
    for index, value in enumerate(values, start=1):
        yield _object_or_skip(file, index, value, "the element", unit="element")


def _csv_fields(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text), strict=True))


def _csv(file: str) -> Iterator[Row | SkippedLine]:
    """CSV with a header line. A record may span lines inside quotes; a quote that never closes (within
    :data:`MAX_CSV_RECORD_LINES` lines, or by the end of the file) costs only the line it opens on."""
    lines = _lines(file)
    pending: list[tuple[int, bytes]] = []  # lines read ahead while looking for a closing quote

    def next_line() -> tuple[int, bytes] | None:
        return pending.pop(0) if pending else next(lines, None)

    header: list[str] | None = None
    while (item := next_line()) is not None:
        number, raw = item
        text = _decode(file, number, raw)
        if isinstance(text, SkippedLine):
            yield text
            continue
        taken: list[tuple[int, bytes]] = []
        while text.count('"') % 2 and len(taken) < MAX_CSV_RECORD_LINES:  # a quoted field goes on
            following = next_line()
            if following is None:
                break
            taken.append(following)
            decoded = _decode(file, *following)
            text += "\n" + (decoded if isinstance(decoded, str) else "")
        try:
            records = _csv_fields(text)
        except csv.Error as err:
            records, problem = [], str(err)
        else:
            problem = ""
        if len(records) != 1 or text.count('"') % 2:
            pending = taken + pending  # only the opening line is dropped; the lines after it are read again
            yield SkippedLine(
                file, number, "malformed_line", f"a quote that never closes{f' ({problem})' if problem else ''}"
            )
            continue
        fields = records[0]
        if header is None:
            header = fields
            continue
        if len(fields) != len(header):
            yield SkippedLine(
                file, number, "malformed_line", f"{len(fields)} fields where the header has {len(header)}"
            )
            continue
        yield Row(file, number, dict(zip(header, fields, strict=True)))


def _parquet(file: str) -> Iterator[Row | SkippedLine]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(
            f"data file {file!r} cannot be read as Parquet ({err}); the file may be cut short or not Parquet"
        ) from None
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for values in batch.to_pylist():
                number += 1
                yield Row(file, number, values, unit="row")
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"data file {file!r}: Parquet data unreadable after row {number} ({err})") from None


def as_text(value: Any) -> str | None:
    """A cell as text where that is meaningful, else None (the row then counts as ``wrong_type``): text
    as it is, a number as it reads (``12`` -> ``"12"``, ``0.5`` -> ``"0.5"``); a bool, an object, a list
    or a non-finite number are not text.

    >>> as_text(12), as_text(0.5), as_text("x"), as_text({"a": 1}), as_text(True), as_text(float("nan"))
    ('12', '0.5', 'x', None, None, None)
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else None
    return None


def is_chat(value: Any) -> bool:
    """Chat messages: a list of ``{"role": ..., "content": <text>}`` objects.

    >>> is_chat([{"role": "user", "content": "hi"}]), is_chat([1, 2]), is_chat("hi")
    (True, False, False)
    """
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("content", ""), str) for m in value)
    )


def buffer_shuffle(items: Iterator[Any], buffer_size: int, seed: int) -> Iterator[Any]:
    """A streaming shuffle: keep ``buffer_size`` items, yield a random one as each new item arrives
    (memory stays at the buffer however long the stream); the same seed gives the same order.

    >>> list(buffer_shuffle(iter(range(6)), 3, seed=0)) == list(buffer_shuffle(iter(range(6)), 3, seed=0))
    True
    >>> sorted(buffer_shuffle(iter(range(6)), 3, seed=0))
    [0, 1, 2, 3, 4, 5]
    """
    import random

    rng, buffer = random.Random(seed), []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer
