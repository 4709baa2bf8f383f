"""A user's messy data: unusable rows are skipped and counted per reason (or stop the run when asked),
and settings that leave nothing to train on fail at start-up in one line naming the setting."""

import json

import pandas as pd
import pytest
from helpers import fast_args

from r1_lightning.cli.main import main
from r1_lightning.data import FileSource, PromptDataModule
from r1_lightning.errors import ConfigError

GOOD = [{"problem": f"What is {a} + {a}?", "solution": f"It is \\boxed{{{2 * a}}}."} for a in range(12)]
BAD = [
    {"problem": "What is 1 + 1?", "solution": ""},  # empty solution (the report's crash)
    {"problem": "What is 2 + 2?", "solution": None},  # null answer
    {"problem": "", "solution": "\\boxed{3}"},  # empty prompt
    {"problem": "What is 3 + 3?", "solution": "six, no box"},  # unparsable with answer_parser: boxed
    {"problem": "word " * 5000, "solution": "\\boxed{1}"},  # far over max_prompt_tokens
]


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _source(path, **kwargs):
    return FileSource(
        path=path, prompt_column="problem", answer_column="solution", answer_parser="boxed", val_size=4, **kwargs
    )


def test_a_file_with_bad_rows_trains_on_the_good_ones_and_counts_the_rest(tmp_path, caplog):
    path = _write(tmp_path / "mixed.jsonl", GOOD[:4] + BAD + GOOD[4:])
    cli = main(
        [
            "fit",
            *fast_args(
                tmp_path,
                "--trainer.log_every_n_steps",
                "1",
                "--data.init_args.batch_size",
                "4",
                "--data.init_args.max_prompt_tokens",
                "512",
                "--data.init_args.source",
                json.dumps(
                    {
                        "class_path": "r1_lightning.data.FileSource",
                        "init_args": {
                            "path": path,
                            "prompt_column": "problem",
                            "answer_column": "solution",
                            "answer_parser": "boxed",
                            "val_size": 4,
                        },
                    }
                ),
                steps=2,
            ),
        ]
    )
    assert cli.trainer.global_step == 2
    assert cli.datamodule.skipped_rows() == {
        "missing_answer": 2,
        "empty_prompt": 1,
        "unparsable_answer": 1,
        "prompt_too_long": 1,
    }
    metrics = pd.read_csv(cli.trainer.log_dir + "/metrics.csv")
    assert metrics["train/skipped_rows/missing_answer"].dropna().iloc[-1] == 2
    assert metrics["train/skipped_rows/prompt_too_long"].dropna().iloc[-1] == 1
    shown = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert any(f"data file {path!r} line 5: column 'solution' is ''" in m for m in shown), shown


def test_on_bad_row_error_names_the_row(tmp_path):
    path = _write(tmp_path / "mixed.jsonl", GOOD[:4] + BAD[:1] + GOOD[4:])
    source = _source(path, on_bad_row="error")
    with pytest.raises(ConfigError, match=r"line 5: column 'solution' is '' \(missing_answer\).*on_bad_row: skip"):
        list(source.iter_train(seed=0, epoch=0))  # the stream stops when it reaches the row


def test_a_file_of_only_bad_rows_fails_at_start_up(tmp_path):
    dm = PromptDataModule(source=_source(_write(tmp_path / "bad.jsonl", BAD[:4])), max_prompt_tokens=None)
    with pytest.raises(
        ConfigError,
        match=r"every row of .*bad.jsonl.* is unusable \(1 empty_prompt, 2 missing_answer, "
        r"1 unparsable_answer\)",
    ):
        dm.check_training_rows()


def test_val_size_that_leaves_no_training_rows_is_named(tmp_path):
    source = FileSource(
        path=_write(tmp_path / "ten.jsonl", GOOD[:10]),
        prompt_column="problem",
        answer_column="solution",
        answer_parser="boxed",
        val_size=16,
    )
    with pytest.raises(
        ConfigError,
        match=r"all 10 usable rows are held out for validation by the source's "
        r"`val_size: 16`",
    ):
        PromptDataModule(source=source).check_training_rows()


def test_every_prompt_too_long_is_named():
    from r1_lightning.data.sources import PromptSource
    from r1_lightning.models.loading import load_tokenizer, resolve_model_path

    class Long(PromptSource):
        def iter_train(self, seed, epoch):
            return iter([{"prompt": "word " * 50, "answer": "1"}] * 3)

    dm = PromptDataModule(source=Long(), max_prompt_tokens=3)
    dm.tokenizer = load_tokenizer(resolve_model_path("tiny:random"))
    with pytest.raises(ConfigError, match="max_prompt_tokens: 3"):
        dm.check_training_rows()


def test_all_zero_reward_weights_fail_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="every weight in `rewards` is 0"):
        main(["fit", *fast_args(tmp_path, "--model.init_args.rewards", "{accuracy_reward: 0.0, format_reward: 0}")])


def test_num_generations_below_two_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"`num_generations` must be >= 2.*\(config: .*r1_zero_tiny.yaml\)"):
        main(["fit", *fast_args(tmp_path, "--model.init_args.num_generations", "1")])
