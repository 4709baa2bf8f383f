"""Prompt sources, held-out splits, templates and the DataModule."""

import itertools
import json

import pytest

from r1_lightning.data import (
    R1_ZERO_TEMPLATE,
    ArithmeticTask,
    CountdownTask,
    FileSource,
    PromptDataModule,
    parse_gsm8k_answer,
    render_prompt,
)
from r1_lightning.data.sources import HubSource
from r1_lightning.errors import ConfigError


def test_arithmetic_records_are_correct_and_seeded():
    task = ArithmeticTask(min_value=0, max_value=50, operations=("+", "-", "*"), num_operands=3)
    first = list(itertools.islice(task.iter_train(seed=1, epoch=0), 20))
    again = list(itertools.islice(task.iter_train(seed=1, epoch=0), 20))
    other = list(itertools.islice(task.iter_train(seed=2, epoch=0), 20))
    assert first == again and first != other
    for record in first:
        assert int(record["answer"]) == eval(record["prompt"])


def test_held_out_split_never_meets_training():
    task = ArithmeticTask(min_value=0, max_value=19, val_fraction=0.2, val_size=40)
    val = {r["prompt"] for r in task.val_records(seed=0)}
    assert len(val) == 40
    train = {r["prompt"] for r in itertools.islice(task.iter_train(seed=0, epoch=0), 3000)}
    assert not val & train


def test_countdown_puzzles_are_solvable():
    from r1_lightning.rewards import countdown_reward

    task = CountdownTask(num_numbers=4)
    records = list(itertools.islice(task.iter_train(seed=0, epoch=0), 30))
    answers = [f"<answer>{r['answer']}</answer>" for r in records]
    scores = countdown_reward(answers, numbers=[r["numbers"] for r in records], target=[r["target"] for r in records])
    assert scores == [1.0] * 30


def test_bad_task_arguments_name_the_key():
    with pytest.raises(ValueError, match="operations"):
        ArithmeticTask(operations=("/",))
    with pytest.raises(ValueError, match="val_fraction"):
        ArithmeticTask(val_fraction=1.5)


def test_r1_zero_template_is_verbatim():
    assert R1_ZERO_TEMPLATE.startswith("A conversation between User and Assistant. The user asks a question")
    assert "<think> reasoning process here </think> <answer> answer here </answer>" in R1_ZERO_TEMPLATE
    text = render_prompt("What is 2 + 2?", "r1_zero")
    assert text == R1_ZERO_TEMPLATE.replace("{prompt}", "What is 2 + 2?")
    assert text.endswith("</answer>. User: What is 2 + 2?. Assistant:")


def test_chat_template_and_errors(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    text = render_prompt("2 + 2", "chat", tokenizer, system_prompt="Be brief.")
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2 + 2<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("x", "chat", tokenizer=None)
    with pytest.raises(ValueError, match="data.template"):
        render_prompt("x", "no placeholder")


def test_gsm8k_answer_is_the_number_after_the_hashes():
    assert parse_gsm8k_answer("She has 3 + 4 = 7 apples.\n#### 7") == "7"
    with pytest.raises(ValueError, match="####"):
        parse_gsm8k_answer("no marker")


@pytest.fixture
def jsonl_file(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"question": f"{i} + 1", "solution": f"so #### {i + 1}", "level": i % 3} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_file_source_jsonl_with_column_mapping_and_held_out(jsonl_file):
    source = FileSource(
        str(jsonl_file),
        prompt_column="question",
        answer_column="solution",
        answer_parser="gsm8k",
        val_size=3,
        shuffle_buffer=0,
    )
    val = source.val_records(seed=0)
    assert [r["prompt"] for r in val] == ["0 + 1", "1 + 1", "2 + 1"]
    assert val[0]["answer"] == "1" and val[0]["level"] == 0
    train = list(source.iter_train(seed=0, epoch=0))
    assert len(train) == 9 and not {r["prompt"] for r in train} & {r["prompt"] for r in val}


def test_file_source_reads_parquet_and_holds_out_val_size_rows(tmp_path):
    import pandas as pd

    path = tmp_path / "data.parquet"
    pd.DataFrame({"prompt": ["a", "b"], "answer": ["1", "2"]}).to_parquet(path)
    source = FileSource(str(path), val_size=1, shuffle_buffer=0)
    assert [r["prompt"] for r in source.iter_train(0, 0)] == ["b"]


def test_missing_column_names_dataset_column_and_columns(jsonl_file):
    source = FileSource(str(jsonl_file), prompt_column="problem", val_size=1)
    with pytest.raises(ValueError, match=r"has no column 'problem' \(it has \['level', 'question', 'solution'\]\)"):
        source.val_records(seed=0)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(Exception, match="empty|no data|Empty"):
        FileSource(str(empty), val_size=1).val_records(seed=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileSource(str(tmp_path / "nope.jsonl")).val_records(seed=0)


def test_hub_source_offline_error_is_clear():
    source = HubSource("no-such-org/no-such-dataset", val_size=1)
    with pytest.raises(ConfigError, match="could not load hub dataset 'no-such-org/no-such-dataset'.*HF_HUB_OFFLINE=1"):
        source.val_records(seed=0)


def test_datamodule_batches_rendered_prompts_and_columns(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    dm = PromptDataModule(source=ArithmeticTask(max_value=9), template="r1_zero", batch_size=4, val_batch_size=5)
    dm.tokenizer = tokenizer
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"prompt", "answer", "raw_prompt"}
    assert len(batch["prompt"]) == 4 and batch["prompt"][0].endswith("Assistant:")
    assert all(int(a) == eval(p) for a, p in zip(batch["answer"], batch["raw_prompt"], strict=True))
    val = next(iter(dm.val_dataloader()))
    assert len(val["prompt"]) == 5


def test_datamodule_skips_and_counts_long_prompts(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    dm = PromptDataModule(source=ArithmeticTask(max_value=9), template="r1_zero", max_prompt_tokens=5)
    dm.tokenizer = tokenizer
    assert dm.render({"prompt": "1 + 1", "answer": "2"}) is None
    assert dm.skipped_long_prompts == 1


@pytest.mark.parametrize("streaming", [True, False])
def test_hub_source_reads_a_local_dataset_streamed_or_downloaded(tmp_path, streaming):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [{"prompt": f"{i} + 1", "answer": str(i + 1)} for i in range(20)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = HubSource(str(folder), streaming=streaming, val_size=4, shuffle_buffer=8)
    val = source.val_records(seed=0)
    train = list(source.iter_train(seed=0, epoch=0))
    assert [r["prompt"] for r in val] == [r["prompt"] for r in rows[:4]]  # held out in file order
    assert sorted(r["prompt"] for r in train) == sorted(r["prompt"] for r in rows[4:])
    assert [r["prompt"] for r in train] != [r["prompt"] for r in rows[4:]]  # shuffled
    assert train == list(source.iter_train(seed=0, epoch=0))  # the same seed, the same order
