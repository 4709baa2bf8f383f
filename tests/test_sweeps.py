"""W&B sweep files: every parameter is a flag of the config the sweep runs, and the command line that
``wandb agent`` builds runs (fast_dev_run, offline)."""

import shutil
from pathlib import Path

import pytest
import yaml

from r1_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def first_value(spec: dict):
    """The value an agent could draw first: a listed value, or the range's lower end."""
    if "values" in spec:
        return spec["values"][0]
    if "value" in spec:
        return spec["value"]
    return spec["min"]


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The argv ``wandb agent`` runs: ${env} -> env, ${args} -> --name=value per parameter."""
    argv = []
    for part in sweep["command"]:
        if part == "${env}":
            argv.append("/usr/bin/env")
        elif part == "${args}":
            argv.extend(f"--{name}={value}" for name, value in values.items())
        elif part == "${program}":
            argv.append(sweep["program"])
        else:
            argv.append(part)
    return argv


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_parameter_is_a_flag_of_its_config(path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep = yaml.safe_load(path.read_text())
    assert sweep["command"][1:3] == ["r1-lightning", "fit"] and "${args}" in sweep["command"]
    for name, spec in sweep["parameters"].items():
        values = spec.get("values") or [first_value(spec), spec.get("max", first_value(spec))]
        for value in values:
            argv = agent_command(sweep, {name: value})[2:] + ["--print_config"]
            with pytest.raises(SystemExit) as exit_info:
                main(argv)
            assert exit_info.value.code in (0, None), f"{path.name}: {name}={value}: {capsys.readouterr().err[-500:]}"
            printed = yaml.safe_load(capsys.readouterr().out)
            node = printed
            for key in name.split("."):
                node = node[key]
            assert node == value or str(node) == str(value), (name, node, value)


def test_agent_command_line_runs_offline(tmp_path, monkeypatch):
    # As a user runs it: from a checkout (configs/ relative), W&B offline, nothing else set.
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = yaml.safe_load((ROOT / "configs" / "sweeps" / "grpo_tiny.yaml").read_text())
    values = {name: first_value(spec) for name, spec in sweep["parameters"].items()}
    argv = agent_command(sweep, values)
    assert argv[:3] == ["/usr/bin/env", "r1-lightning", "fit"]
    extra = [
        "--trainer.max_steps=1",
        "--model.init_args.model=tiny:random",
        "--model.init_args.validate_at_start=false",
    ]
    for _ in range(2):
        cli = main(argv[2:] + extra)
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.lr == pytest.approx(values["model.init_args.lr"])
    assert cli.model.hparams.num_generations == values["model.init_args.num_generations"]
    assert type(cli.trainer.loggers[1]).__name__ == "WandbLogger"
    # A local, versioned copy of every W&B run: the second run does not overwrite the first.
    for version in ("version_0", "version_1"):
        run = tmp_path / "runs" / "wandb" / version
        assert (run / "config.yaml").exists() and (run / "hf_model" / "config.json").exists(), version
        assert "train/reward" in (run / "metrics.csv").read_text().splitlines()[0]
