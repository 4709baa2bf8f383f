"""The multi-stage pipeline: shipped pipelines parse; a killed run resumes without redoing finished stages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from r1_lightning.cli.main import main
from r1_lightning.pipeline.rejection import RejectionSampler
from r1_lightning.pipeline.runner import load_pipeline, set_dotted, validate_stages

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "configs" / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_parse_stage_by_stage(path, tmp_path, capsys):
    pipeline = load_pipeline(path, output_dir=str(tmp_path))
    pipeline.outputs = {stage["name"]: "tiny:random" for stage in pipeline.stages}
    for stage in pipeline.stages:
        kind = stage.get("kind", "fit")
        if kind == "fit":
            config = pipeline.load_config(stage)
            (tmp_path / "stage.yaml").write_text(yaml.safe_dump(config))
            with pytest.raises(SystemExit) as exit_info:
                main(["fit", "--config", str(tmp_path / "stage.yaml"), "--print_config"])
            assert exit_info.value.code in (0, None), stage["name"]
            assert "class_path: r1_lightning" in capsys.readouterr().out
        elif kind == "rejection_sampling":
            parser = ArgumentParser(exit_on_error=False)
            parser.add_class_arguments(RejectionSampler, "sampler")
            parser.parse_object({"sampler": pipeline.load_config(stage)})


def test_stage_errors_name_the_stage_and_the_fix():
    with pytest.raises(ValueError, match="unknown key 'input'; did you mean 'inputs'"):
        validate_stages([{"name": "a", "config": {}, "input": {}}])
    with pytest.raises(ValueError, match="refers to 'later', which is not an earlier stage"):
        validate_stages(
            [{"name": "a", "config": {}, "inputs": {"model.init_args.model": "later"}}, {"name": "later", "config": {}}]
        )
    with pytest.raises(ValueError, match="`kind` must be one of"):
        validate_stages([{"name": "a", "kind": "train", "config": {}}])
    c = {"trainer": {"callbacks": [{"init_args": {}}]}}
    set_dotted(c, "trainer.callbacks.0.init_args.x", 1)
    assert c["trainer"]["callbacks"][0]["init_args"]["x"] == 1


def _tiny_pipeline(tmp_path: Path) -> Path:
    trainer = {
        "accelerator": "cpu",
        "max_steps": 4,
        "limit_val_batches": 0,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    spec = {
        "name": "resume_test",
        "output_dir": str(tmp_path / "run"),
        "evaluation": {
            "source": {"class_path": "r1_lightning.data.ArithmeticTask", "init_args": {"max_value": 9, "val_size": 4}},
            "num_samples": 2,
            "sampling": {"temperature": 0.6, "max_new_tokens": 8},
        },
        "stages": [
            {
                "name": "sft",
                "checkpoint_every": 2,
                "config": {
                    "seed_everything": 0,
                    "trainer": trainer,
                    "model": {
                        "class_path": "r1_lightning.training.sft.SFTModule",
                        "init_args": {"model": "tiny:random", "lr": 0.001},
                    },
                    "data": {
                        "class_path": "r1_lightning.data.sft_data.SFTDataModule",
                        "init_args": {
                            "source": {
                                "class_path": "r1_lightning.data.records.ArithmeticCoTTask",
                                "init_args": {"num_records": 24},
                            },
                            "val_size": 4,
                            "batch_size": 4,
                        },
                    },
                },
            },
            {
                "name": "rl",
                "checkpoint_every": 2,
                "inputs": {"model.init_args.model": "sft"},
                "config": {
                    "seed_everything": 0,
                    "trainer": {
                        **trainer,
                        "callbacks": [
                            {
                                "class_path": "helpers.pipeline_probe.KillAtStep",
                                "init_args": {"step": 3, "marker": str(tmp_path / "killed")},
                            }
                        ],
                    },
                    "model": {
                        "class_path": "r1_lightning.training.grpo.GRPOModule",
                        "init_args": {
                            "num_generations": 2,
                            "sampling": {"max_new_tokens": 6},
                            "validate_at_start": False,
                            "validate_at_end": False,
                        },
                    },
                    "data": {"class_path": "r1_lightning.data.PromptDataModule", "init_args": {"batch_size": 2}},
                },
            },
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "r1_lightning.cli", "pipeline", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_killed_pipeline_resumes_without_redoing_finished_stages(tmp_path):
    path = _tiny_pipeline(tmp_path)
    run = tmp_path / "run"
    first = _run(path)
    assert first.returncode == -9, first.stderr[-2000:]  # SIGKILL in the middle of stage "rl"
    assert (run / "sft" / "stage.json").exists() and not (run / "rl" / "stage.json").exists()
    assert (run / "rl" / "checkpoints" / "last.ckpt").exists()
    sft_record = (run / "sft" / "stage.json").read_text()
    sft_mtime = (run / "sft" / "hf_model" / "model.safetensors").stat().st_mtime

    second = _run(path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage 'sft' already finished, skipped" in second.stderr
    assert "stage 'rl' resumes from" in second.stderr
    assert (run / "sft" / "stage.json").read_text() == sft_record
    assert (run / "sft" / "hf_model" / "model.safetensors").stat().st_mtime == sft_mtime
    record = json.loads((run / "rl" / "stage.json").read_text())
    assert set(record["metrics"]) == {
        "pass@1",
        "pass@1_ci95",
        "pass@1_ci95_problems",
        "pass@k",
        "maj@k",
        "format",
        "language",
        "length",
        "problems",
        "samples",
    }
    assert record["metrics"]["pass@k"] >= record["metrics"]["pass@1"] and record["metrics"]["pass@1_ci95"] >= 0
    # the resumed attempt continued the stage's metrics.csv after the checkpoint (step 2): every step
    # is logged once, nothing was redone, no second log folder
    import pandas as pd

    metrics = pd.read_csv(run / "rl" / "logs" / "version_0" / "metrics.csv")
    train_steps = list(metrics.dropna(subset=["train/reward"])["step"])
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 4 and train_steps[0] <= 2, train_steps
    assert not (run / "rl" / "logs" / "version_1").exists()
    report = (run / "report.md").read_text()
    assert "| sft | fit |" in report and "| rl | fit |" in report
    assert "stage 'rl': step" in second.stderr and "ETA" in second.stderr  # progress lines, output in a file
    assert (run / "report.csv").exists() and (run / "report.png").stat().st_size > 0


def _short_r1_tiny(tmp_path: Path) -> Path:
    """configs/pipeline/r1_tiny.yaml, every stage kept, each made a few steps long on a random-init model."""
    spec = yaml.safe_load((ROOT / "configs" / "pipeline" / "r1_tiny.yaml").read_text())
    spec["evaluation"]["num_samples"] = 2
    spec["evaluation"]["pass_at"] = [2]
    spec["evaluation"]["source"]["init_args"]["val_size"] = 8
    for stage in spec["stages"]:
        if stage.get("model") == "tiny:arithmetic":
            stage["model"] = "tiny:random"
        config = stage.get("config") or {}
        if stage.get("kind", "fit") == "fit":
            trainer = config["trainer"]
            trainer.update(max_steps=2, limit_val_batches=0, log_every_n_steps=1)
            trainer.pop("val_check_interval", None)
            init = config["model"]["init_args"]
            if init.get("model") == "tiny:arithmetic":
                init["model"] = "tiny:random"
            if config["model"]["class_path"].endswith("GRPOModule"):
                init.update(validate_at_start=False, validate_at_end=False)
        elif stage.get("kind") == "rejection_sampling":
            config.update(num_prompts=8, samples_per_prompt=2, keep_per_prompt=1)
    path = tmp_path / "r1_tiny_short.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_every_stage_of_r1_tiny_runs_with_ddp_on_two_cpu_ranks(tmp_path):
    """``r1-lightning pipeline --fit_config configs/strategy/ddp.yaml``: each fit stage runs as its own
    2-process group (the pipeline process alone walks the stages and writes the report)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "r1_lightning.cli", "pipeline", "--config", str(_short_r1_tiny(tmp_path)),
        "--output_dir", str(tmp_path / "run"), "--fit_config", str(ROOT / "configs" / "strategy" / "ddp.yaml"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-4000:]
    spec = yaml.safe_load((tmp_path / "r1_tiny_short.yaml").read_text())
    fits = [s["name"] for s in spec["stages"] if s.get("kind", "fit") == "fit"]
    for stage in spec["stages"]:
        assert (tmp_path / "run" / stage["name"] / "stage.json").exists(), stage["name"]
    for name in fits:
        config = yaml.safe_load((tmp_path / "run" / name / "fit_config.yaml").read_text())
        assert config["trainer"]["devices"] == 2 and "DDPStrategy" in config["trainer"]["strategy"]["class_path"]
    assert console.count("GLOBAL_RANK: 1, MEMBER: 2/2") == len(fits) == 6
    assert (tmp_path / "run" / "report.md").exists()
