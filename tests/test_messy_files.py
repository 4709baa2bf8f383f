"""Data files as they come: each malformed line is skipped, counted and named by its line; a file that
cannot be read at all, or a missing path, is one clean line; no data problem prints a traceback.

The files are those a user meets (80 good rows and one problem each): a truncated JSON line, bytes that
are not UTF-8, a line that is not an object, a value of the wrong type, a CSV line with extra fields or a
quote that never closes, an empty file, a JSON array cut short, a corrupt Parquet file.
"""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from helpers import ROOT, fast_args

from r1_lightning.cli.main import main
from r1_lightning.data.files import DataFileError, Row, SkippedLine, read_rows
from r1_lightning.data.records import DatasetRecords, text_records
from r1_lightning.data.sources import FileSource
from r1_lightning.errors import ConfigError, MissingPathError

GOOD = [{"question": f"{i} + 1", "answer": str(i + 1)} for i in range(80)]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def _jsonl(rows: list) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in rows) + b"\n"


def _csv(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


CSV_GOOD = ["question,answer"] + [f"{i} + 1,{i + 1}" for i in range(80)]
#: name -> (file content, expected skipped (line, reason) pairs, rows read)
MESSY = {
    "truncated.jsonl": (
        _jsonl(GOOD[:30]) + b'{"question": "oops", \n' + _jsonl(GOOD[30:]),
        [(31, "malformed_line")],
        80,
    ),
    "bad_bytes.jsonl": (
        _jsonl(GOOD[:30]) + b'{"question": "\xff\xfe", "answer": "1"}\n' + _jsonl(GOOD[30:]),
        [(31, "bad_encoding")],
        80,
    ),
    "not_objects.jsonl": (
        _jsonl(GOOD[:5]) + b"[1, 2]\n42\n" + _jsonl(GOOD[5:]),
        [(6, "malformed_line"), (7, "malformed_line")],
        80,
    ),
    "bom_crlf_blank.jsonl": (
        b"\xef\xbb\xbf" + b"\r\n\r\n".join(json.dumps(r).encode() for r in GOOD),  # and no final newline
        [],
        80,
    ),
    "extra_fields.csv": (_csv(CSV_GOOD[:11] + ["a,b,c,d"] + CSV_GOOD[11:]), [(12, "malformed_line")], 80),
    "open_quote.csv": (_csv(CSV_GOOD[:20] + ['"never closed,5'] + CSV_GOOD[20:]), [(21, "malformed_line")], 80),
    "bad_bytes.csv": (_csv(CSV_GOOD[:5]) + b"\xff,1\n" + _csv(CSV_GOOD[5:]), [(6, "bad_encoding")], 80),
    "array.json": (json.dumps(GOOD[:10] + [5] + GOOD[10:]).encode(), [(11, "malformed_line")], 80),
}


@pytest.fixture
def messy(tmp_path):
    def write(name: str) -> str:
        path = tmp_path / name
        path.write_bytes(MESSY[name][0])
        return str(path)

    return write


@pytest.mark.parametrize("name", sorted(MESSY))
def test_each_malformed_line_is_skipped_with_its_number_and_the_rest_is_read(messy, name):
    items = list(read_rows(messy(name)))
    skipped = [(i.line, i.reason) for i in items if isinstance(i, SkippedLine)]
    rows = [i for i in items if isinstance(i, Row)]
    _, expected_skips, expected_rows = MESSY[name]
    assert skipped == expected_skips
    assert len(rows) == expected_rows
    # every good row is there, in order, with its values as written (CSV cells are text)
    assert [r.values["question"] for r in rows] == [g["question"] for g in GOOD]
    assert [str(r.values["answer"]) for r in rows] == [g["answer"] for g in GOOD]


def test_an_open_csv_quote_does_not_swallow_the_rows_after_it(messy):
    rows = [i for i in read_rows(messy("open_quote.csv")) if isinstance(i, Row)]
    # the header is line 1; line 21 (the open quote) alone is gone, and line 22 on are rows again
    assert [r.line for r in rows][18:21] == [20, 22, 23]
    assert len(rows) == 80


def test_a_quoted_csv_field_may_span_lines(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('question,answer\n"line one\nline two",3\n1 + 1,2\n')
    rows = [i for i in read_rows(str(path)) if isinstance(i, Row)]
    assert [r.values for r in rows] == [
        {"question": "line one\nline two", "answer": "3"},
        {"question": "1 + 1", "answer": "2"},
    ]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.jsonl", b"", "is empty"),
        ("blank.jsonl", b"\n\n  \n", "is empty"),
        ("cut.json", json.dumps(GOOD).encode()[:-40], "not a valid JSON array .*line 1"),
        ("corrupt.parquet", b"PAR1" + b"\0" * 64, "cannot be read as Parquet"),
        ("data.txt", b"x", "unknown extension"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_clean_error_naming_it(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=match) as info:
        list(read_rows(str(path)))
    assert name in str(info.value)


def test_a_missing_file_is_a_config_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(MissingPathError, match="does not exist") as info:
        list(read_rows(str(tmp_path / "nope.jsonl")))
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ConfigError)


def test_values_of_the_wrong_type_are_skipped_and_numbers_become_text(tmp_path):
    rows = GOOD[:3] + [
        {"question": "x", "answer": {"value": 3}},  # an object: wrong_type
        {"question": ["not", "messages"], "answer": "1"},  # a list that is not chat messages: wrong_type
        {"question": "y", "answer": True},  # a bool: wrong_type
        {"question": 12, "answer": 13},  # numbers: converted
        {"question": "z", "answer": 0.5},
        {"question": [{"role": "user", "content": "chat"}], "answer": "7"},  # chat messages: kept
    ]
    path = tmp_path / "typed.jsonl"
    path.write_bytes(_jsonl(rows))
    source = FileSource(str(path), prompt_column="question", val_size=0, shuffle_buffer=0)
    records = list(source.iter_train(0, 0))
    assert dict(source.skipped_rows) == {"wrong_type": 3}
    assert [(r["prompt"], r["answer"]) for r in records[3:5]] == [("12", "13"), ("z", "0.5")]
    assert records[5]["prompt"] == [{"role": "user", "content": "chat"}]


def test_parquet_rows_of_the_wrong_type_are_skipped(tmp_path):
    path = tmp_path / "typed.parquet"
    pd.DataFrame({"question": ["a", "b", "c"], "answer": [{"v": 1}, None, {"v": 2}]}).to_parquet(path)
    source = FileSource(str(path), prompt_column="question", val_size=0, shuffle_buffer=0)
    assert list(source.iter_train(0, 0)) == []
    assert dict(source.skipped_rows) == {"wrong_type": 2, "missing_answer": 1}


def test_supervised_records_skip_bad_lines_and_values_the_same_way(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(6)]
    path.write_bytes(
        _jsonl(rows[:2]) + b'{"prompt": "cut\n' + _jsonl(rows[2:] + [{"prompt": "q", "response": {"x": 1}}])
    )
    source = DatasetRecords(str(path))
    records = source.records()
    assert dict(source.skipped_rows) == {"malformed_line": 1} and len(records) == 7
    kept, skipped = text_records(records, ["prompt", "response"], "SFT data")
    assert len(kept) == 6 and dict(skipped) == {"wrong_type": 1}


def test_a_big_jsonl_streams_in_flat_memory(tmp_path):
    """Reading a file 10x larger (with a bad line every 1000) must not raise the peak memory by more than
    a small fraction of the file: rows are read one at a time, never the whole file."""
    probe = (
        "import resource, sys\n"
        "from r1_lightning.data.sources import FileSource\n"
        "s = FileSource(sys.argv[1], prompt_column='question', val_size=0)\n"
        "n = sum(1 for _ in s.iter_train(0, 0))\n"
        "print(n, sum(s.skipped_rows.values()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    row = json.dumps({"question": "q" * 200, "answer": "1"}).encode()
    results = {}
    for name, count in (("small", 2_000), ("big", 40_000)):
        path = tmp_path / f"{name}.jsonl"
        with path.open("wb") as handle:
            for i in range(count):
                handle.write(row + b"\n" if i % 1000 != 999 else b'{"question": \n')
        out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, env=ENV)
        rows, skipped, peak_kib = map(int, out.stdout.split())
        assert (rows, skipped) == (count - count // 1000, count // 1000)
        results[name] = (peak_kib, path.stat().st_size)
    growth_bytes = (results["big"][0] - results["small"][0]) * 1024
    file_growth = results["big"][1] - results["small"][1]  # about 8.5 MB
    assert growth_bytes < 0.25 * file_growth, (results, growth_bytes)


CONSOLE = "import sys; from r1_lightning.cli.main import console_main; sys.exit(console_main())"


def _source(path: str) -> str:
    init = {"path": path, "prompt_column": "question", "val_size": 4}
    return json.dumps({"class_path": "r1_lightning.data.FileSource", "init_args": init})


def _fit(tmp_path, path: str) -> subprocess.CompletedProcess:
    args = fast_args(tmp_path, "--data.init_args.source", _source(path), "--trainer.log_every_n_steps", "1", steps=2)
    command = [sys.executable, "-c", CONSOLE, "fit", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated.jsonl", "malformed_line"),
        ("bad_bytes.jsonl", "bad_encoding"),
        ("extra_fields.csv", "malformed_line"),
        ("open_quote.csv", "malformed_line"),
    ],
)
def test_fit_on_the_shipped_default_skips_the_bad_line_and_trains(tmp_path, messy, name, reason):
    result = _fit(tmp_path, messy(name))
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    assert "Traceback" not in console
    line = MESSY[name][1][0][0]
    assert f"{name}' line {line}" in console and f"({reason})" in console
    assert f"skipped data rows over the run: 1 (1 {reason})" in console
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert metrics[f"train/skipped_rows/{reason}"].dropna().iloc[-1] == 1


def test_fit_with_wrong_types_trains_on_the_rest_in_process(tmp_path):
    rows = GOOD[:30] + [{"question": "x", "answer": {"value": 3}}, {"question": 12, "answer": 13}] + GOOD[30:]
    path = tmp_path / "typed.jsonl"
    path.write_bytes(_jsonl(rows))
    cli = main(["fit", *fast_args(tmp_path, "--data.init_args.source", _source(str(path)), steps=2)])
    assert cli.trainer.global_step == 2
    assert cli.datamodule.skipped_rows() == {"wrong_type": 1}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["empty.jsonl", "missing.jsonl"])
def test_fit_on_an_empty_or_missing_file_is_one_line(tmp_path, name):
    path = tmp_path / name
    if name == "empty.jsonl":
        path.write_text("")
    result = _fit(tmp_path, str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0], result.stderr


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CONSOLE, "evaluate", *args], capture_output=True, text=True, env=ENV)


@pytest.mark.slow
def test_evaluate_on_a_messy_benchmark_scores_the_rest_and_counts_the_line(messy):
    result = _evaluate(
        "--model", "tiny:random", "--benchmark", messy("truncated.jsonl"), "--prompt_column", "question",
        "--num_samples", "2", "--max_new_tokens", "4", "--batch_size", "80",
    )  # fmt: skip
    console = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in console, console
    assert "truncated.jsonl' line 31" in console
    assert "80 problems x 2 samples" in console and "skipped_rows/malformed_line 1" in console


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, named",
    [
        (["--model", "/no/such/model", "--benchmark", "b.jsonl"], "/no/such/model"),
        (["--model", "tiny:random", "--benchmark", "/no/such/bench.jsonl"], "/no/such/bench.jsonl"),
    ],
)
def test_evaluate_with_a_missing_path_is_one_line(tmp_path, args, named):
    (tmp_path / "b.jsonl").write_bytes(_jsonl(GOOD[:2]))
    args = [str(tmp_path / a) if a == "b.jsonl" else a for a in args]
    result = _evaluate(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and named in result.stderr, result.stderr


@pytest.mark.slow
def test_verbose_shows_the_traceback_of_a_data_problem(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    result = subprocess.run(
        [sys.executable, "-c", CONSOLE, "evaluate", "--model", "tiny:random", "--benchmark", str(path)],
        capture_output=True,
        text=True,
        env={**ENV, "R1_LIGHTNING_VERBOSE": "1"},
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "is empty" in result.stderr
