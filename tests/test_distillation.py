"""Distillation (DeepSeek-R1's last stage and its "distillation v.s. RL" finding): the shipped pipeline
compares like with like, the report states the comparison, an outside teacher needs no teacher stage, and
the student base is a smaller pretrained model."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from r1_lightning.evaluation.report import write_report
from r1_lightning.pipeline.runner import Pipeline, load_pipeline, pipeline_main, validate_comparisons
from r1_lightning.tiny.base import SMALL_RECIPE, BaseRecipe

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "configs" / "pipeline" / "distill_tiny.yaml"


def _stage(pipeline: Pipeline, name: str) -> dict:
    return next(stage for stage in pipeline.stages if stage["name"] == name)


def test_student_rl_is_the_teachers_recipe_on_the_small_base(tmp_path):
    """R1's comparison is fair only if RL on the student is the teacher's RL: same steps, prompts per step,
    group size, learning rate and rewards; only the base model differs."""
    pipeline = load_pipeline(DISTILL, output_dir=str(tmp_path))
    pipeline.outputs = {stage["name"]: f"<{stage['name']} output>" for stage in pipeline.stages}
    teacher = pipeline.load_config(_stage(pipeline, "teacher"))
    student = pipeline.load_config(_stage(pipeline, "student_rl"))
    assert teacher["model"]["init_args"]["model"] == "tiny:arithmetic"
    assert student["model"]["init_args"]["model"] == "tiny:arithmetic-small"
    student["model"]["init_args"]["model"] = "tiny:arithmetic"
    assert student == teacher
    # the distilled student starts from the same small base, and the traces cover the whole training split
    distilled = pipeline.load_config(_stage(pipeline, "student_distilled"))
    assert distilled["model"]["init_args"]["model"] == "tiny:arithmetic-small"
    traces = pipeline.load_config(_stage(pipeline, "teacher_traces"))
    assert traces["num_prompts"] is None and traces["samples_per_prompt"] > traces["keep_per_prompt"] > 1
    assert pipeline.comparisons[0] == ("student_distilled", "student_rl")


def test_overrides_merge_over_the_stage_config(tmp_path):
    stages = [
        {
            "name": "a",
            "config": {"trainer": {"max_steps": 5, "devices": 1}, "model": {"init_args": {"lr": 1.0}}},
            "overrides": {"trainer": {"max_steps": 7}},
        }
    ]
    config = Pipeline("p", stages, None, str(tmp_path)).load_config(stages[0])
    assert config == {"trainer": {"max_steps": 7, "devices": 1}, "model": {"init_args": {"lr": 1.0}}}
    with pytest.raises(ValueError, match="`overrides` must be a mapping"):
        Pipeline("p", [{"name": "a", "config": {}, "overrides": ["x"]}], None, str(tmp_path))


def test_compare_names_stages_of_the_pipeline():
    assert validate_comparisons([["b", "a"]], ["a", "b"]) == [("b", "a")]
    with pytest.raises(ValueError, match="'student' is not a stage"):
        validate_comparisons([["student", "a"]], ["a", "b"])
    with pytest.raises(ValueError, match="each entry is a pair"):
        validate_comparisons([["a"]], ["a", "b"])


def _record(name: str, pass1: float, ci: float) -> dict:
    metrics = dict.fromkeys(("pass@k", "maj@k", "format", "language", "length"), 0.5)
    metrics.update({"pass@1": pass1, "pass@1_ci95": ci, "problems": 64, "samples": 256})
    return {"name": name, "kind": "fit", "output": "x", "metrics": metrics, "summary": None, "seconds": 60.0}


def test_report_says_whether_distillation_beats_rl_beyond_the_interval(tmp_path):
    records = [_record("student_rl", 0.40, 0.03), _record("student_distilled", 0.45, 0.04), _record("d2", 0.46, 0.02)]
    write_report(tmp_path, records, 4, [("student_distilled", "student_rl"), ("d2", "student_rl"), ("rl", "x")])
    report = (tmp_path / "report.md").read_text()
    # +0.05 against an interval of sqrt(0.03^2 + 0.04^2) = 0.05: inside it, so not a finding
    assert "- student_distilled vs student_rl: pass@1 0.450 vs 0.400, difference +0.050 ± 0.050: not dist" in report
    # +0.06 against sqrt(0.03^2 + 0.02^2) = 0.036: a finding
    assert "- d2 vs student_rl: pass@1 0.460 vs 0.400, difference +0.060 ± 0.036: **above**" in report
    assert "rl vs x" not in report  # a pair with a stage that has no evaluation is left out


def _outside_teacher_pipeline(tmp_path: Path, teacher_folder: Path) -> Path:
    """The shipped distill_tiny.yaml as its comment says to use it with an outside teacher, shrunk to seconds:
    the teacher stage becomes ``kind: evaluate, model: <folder>``; the student stages are the shipped ones."""
    spec = yaml.safe_load(DISTILL.read_text())
    spec["output_dir"] = str(tmp_path / "run")
    spec["evaluation"]["source"]["init_args"].update(max_value=9, val_size=4)
    spec["evaluation"].update(num_samples=2, sampling={"temperature": 0.6, "max_new_tokens": 8})
    spec["compare"] = [["student_distilled", "teacher"]]
    stages = {stage["name"]: copy.deepcopy(stage) for stage in spec["stages"]}
    traces, student = stages["teacher_traces"], stages["student_distilled"]
    traces["config"].update(num_prompts=6, samples_per_prompt=2, keep_per_prompt=2, batch_size=6)
    traces["config"]["source"]["init_args"].update(max_value=9, val_size=4)
    traces["config"]["sampling"] = {"temperature": 1.0, "max_new_tokens": 8}
    # A random-init teacher writes nothing correct: accept every trace (what is tested is the wiring).
    traces["config"]["verifier"] = "helpers.rewards.accept_all"
    traces["config"]["filters"] = {"require_format": False, "min_language_consistency": None}
    student["config"]["trainer"].update(max_steps=3, val_check_interval=3)
    student["config"]["model"]["init_args"]["model"] = "tiny:random"
    student["config"]["data"]["init_args"].update(batch_size=4, val_size=2)
    spec["stages"] = [{"name": "teacher", "kind": "evaluate", "model": str(teacher_folder)}, traces, student]
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_an_outside_teacher_folder_is_distilled_without_a_teacher_stage(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    teacher = tmp_path / "my_teacher"  # a saved HF folder, as a user would bring a hub download
    model.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    records = pipeline_main(["--config", str(_outside_teacher_pipeline(tmp_path, teacher))])
    by_name = {record["name"]: record for record in records}
    assert by_name["teacher"]["kind"] == "evaluate" and by_name["teacher"]["output"] == str(teacher)
    assert by_name["teacher"]["metrics"]["problems"] == 4  # scored like any stage
    run = tmp_path / "run"
    samples = [json.loads(line) for line in (run / "teacher_traces" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12  # 6 prompts x 2 samples, drawn from the folder's model
    import datasets

    dataset = datasets.load_from_disk(str(run / "teacher_traces" / "dataset"))
    assert 0 < len(dataset) <= 12
    assert (Path(by_name["student_distilled"]["output"]) / "config.json").exists()
    assert "student_distilled vs teacher" in (run / "report.md").read_text()


@pytest.mark.slow
def test_the_student_base_is_smaller_pretrained_and_weak_but_not_blank(capsys):
    from r1_lightning.models.loading import load_policy
    from r1_lightning.pipeline.runner import build_evaluator

    teacher_recipe = BaseRecipe()
    assert SMALL_RECIPE.hidden_size < teacher_recipe.hidden_size and SMALL_RECIPE.layers < teacher_recipe.layers
    with torch.no_grad():  # built on first use, like the pipeline's evaluate stage does
        model, _ = load_policy("tiny:arithmetic-small")
    err = capsys.readouterr().err
    assert "building the small tiny offline base model" in err and f"{SMALL_RECIPE.steps}/{SMALL_RECIPE.steps}" in err
    assert model.config.hidden_size == SMALL_RECIPE.hidden_size
    assert model.config.num_hidden_layers == SMALL_RECIPE.layers
    spec = yaml.safe_load(DISTILL.read_text())["evaluation"]
    metrics = build_evaluator({**spec, "num_samples": 8})("tiny:arithmetic-small")
    assert metrics["pass@k"] > 0.0  # not blank: some held-out problem is solved in 8 tries
    assert metrics["pass@1"] < 0.25  # weak: far below the RL'd teacher's ~0.7
    assert metrics["format"] > 0.2  # it has seen the <think>/<answer> format in pretraining
