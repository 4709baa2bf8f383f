"""Rejection sampling: each filter, dedupe, the per-prompt cap, non-reasoning mix, dataset + stats."""

import json

import datasets
import pytest

from r1_lightning.data.records import NonReasoningTask
from r1_lightning.data.tasks import ArithmeticTask
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.pipeline.rejection import DROP_REASONS, RejectionFilters, RejectionSampler, drop_reason

GOOD = "<think>We add 3 and 4. 3+4=7.</think> <answer>7</answer>"


@pytest.mark.parametrize(
    "text, reason",
    [
        (GOOD, None),
        ("We add 3 and 4. <answer>7</answer>", "bad_format"),
        ("<think>We add 3 and 4. Luego sumamos los números.</think> <answer>7</answer>", "mixed_language"),
        (
            "<think>" + "We add the numbers and check. " * 5 + "\n\nShort one.</think> <answer>7</answer>",
            "long_paragraph",
        ),
        ("<think>We add.\n```python\nprint(3 + 4)\n```</think> <answer>7</answer>", "code_block"),
    ],
)
def test_each_rejection_filter_drops_its_kind_of_completion(text, reason):
    filters = RejectionFilters(max_paragraph_words=20)
    assert drop_reason(text, filters, "en") == reason


def test_a_switched_off_filter_drops_nothing():
    off = RejectionFilters(
        require_format=False, min_language_consistency=None, max_paragraph_words=None, drop_code_blocks=False
    )
    for text in ("no tags", "<think>Sumamos.</think>", "<think>```x```</think>"):
        assert drop_reason(text, off, "en") is None


def always_right(completions, **kwargs):
    return [1.0] * len(completions)


def right_if_short(completions, **kwargs):
    return [1.0 if len(c) % 2 else 0.0 for c in completions]


def test_sampler_writes_a_loadable_dataset_with_stats(tmp_path, monkeypatch):
    sampler = RejectionSampler(
        model="tiny:random",
        source=ArithmeticTask(max_value=9),
        num_prompts=6,
        samples_per_prompt=4,
        keep_per_prompt=2,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=6),
        verifier="test_rejection.right_if_short",
        filters=RejectionFilters(require_format=False, min_language_consistency=None),
        non_reasoning=NonReasoningTask(num_records=5),
        output_dir=str(tmp_path),
    )
    stats = sampler.run()
    assert stats["samples"] == 24 and set(stats["dropped"]) == set(DROP_REASONS)
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["samples"]  # every sample accounted for
    assert stats["dropped"]["incorrect"] > 0
    data = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert set(data.column_names) == {"prompt", "response", "answer", "language", "kind"}
    assert data["kind"].count("non_reasoning") == 5 and data["kind"].count("reasoning") == stats["kept"]
    per_prompt = {}
    for row in data:
        if row["kind"] == "reasoning":
            per_prompt.setdefault(row["prompt"], []).append(" ".join(row["response"].split()))
    assert all(len(v) <= 2 and len(set(v)) == len(v) for v in per_prompt.values())  # cap and dedupe
    assert json.loads((tmp_path / "stats.json").read_text())["kept"] == stats["kept"]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 24
    # held-out problems are never sampled
    held_out = {r["prompt"] for r in ArithmeticTask(max_value=9).val_records(0)}
    assert not held_out & {s["prompt"] for s in samples}


def test_duplicates_are_dropped_and_counted(tmp_path):
    # greedy decoding: the 4 samples of a prompt are identical, so 3 of every 4 are duplicates
    sampler = RejectionSampler(
        model="tiny:random",
        source=ArithmeticTask(max_value=9),
        num_prompts=3,
        samples_per_prompt=4,
        keep_per_prompt=4,
        sampling=SamplingConfig(temperature=0.0, max_new_tokens=4),
        verifier="test_rejection.always_right",
        filters=RejectionFilters(require_format=False, min_language_consistency=None),
        output_dir=str(tmp_path),
    )
    stats = sampler.run()
    assert stats["kept"] == 3 and stats["dropped"]["duplicate"] == 9


def test_generative_judge_is_used_for_unverifiable_answers(tmp_path):
    sampler = RejectionSampler(
        model="tiny:random",
        source=ArithmeticTask(max_value=9),
        num_prompts=2,
        samples_per_prompt=2,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=4),
        verifier="test_rejection.no_verdict",
        judge="tiny:random",
        filters=RejectionFilters(require_format=False, min_language_consistency=None),
        non_reasoning=NonReasoningTask(num_records=2),
        output_dir=str(tmp_path),
    )
    stats = sampler.run()
    assert stats["judge_calls"] == 4 and stats["dropped"]["unverifiable"] == 0


def no_verdict(completions, **kwargs):
    return [None] * len(completions)
