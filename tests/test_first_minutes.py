"""A new user's first minutes: help that lists every subcommand at once, the GRPO options one
command away, a console without library noise, and configuration errors as one short paragraph."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import NO_EVAL

from r1_lightning.cli.main import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "r1_zero_tiny.yaml")
ENTRY = (
    "import sys; from r1_lightning.cli.main import console_main; sys.argv[0] = 'r1-lightning'; sys.exit(console_main())"
)


def run_script(*args, cwd=None):
    """The console script as the installed wrapper runs it: ``sys.exit(console_main())``."""
    return subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_subcommand_without_importing_torch():
    code = (
        "import sys; from r1_lightning.cli.main import main; main(['--help']); "
        "heavy = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; print('HEAVY', heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("fit", "validate", "test", "predict", "pipeline", "export", "evaluate"):
        assert f"\n  {name} " in result.stdout, name
    assert "HEAVY []" in result.stdout  # instant: nothing heavy imported for the help
    assert set(SUBCOMMANDS) == {"fit", "validate", "test", "predict", "pipeline", "export", "evaluate"}


def test_model_class_help_shows_the_grpo_options(capsys):
    try:
        main(["fit", "--model", "GRPOModule", "--help"])
    except SystemExit as exit_info:
        assert exit_info.code in (0, None)
    out = capsys.readouterr().out
    for option in ("--model.num_generations", "--model.beta", "--model.epsilon_high", "--model.loss_type"):
        assert option in out, option


def test_fit_help_points_to_the_class_options(capsys):
    try:
        main(["fit", "--help"])
    except SystemExit:
        pass
    assert "r1-lightning fit --model GRPOModule --help" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
def test_a_run_prints_no_library_noise(tmp_path):
    result = run_script(
        "fit",
        "--config",
        TINY,
        "--model.init_args.model",
        "tiny:random",
        "--trainer.max_steps",
        "1",
        *NO_EVAL,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for noise in (
        "litlogger",
        "litmodels",
        "LeafSpec",
        "in eval mode",
        "pre-optimization state",
        "Loading weights",
        "Writing model shards",
        "gemm_4bit_forward",
        "args parameter is intended",
    ):
        assert noise not in output, noise
    # and nothing new of the kind: a library upgrade's deprecation (transformers 5.24 renamed
    # `past_key_values` to `cache`) would otherwise reach every user's first run unnoticed
    flagged = [line for line in output.splitlines() if re.search(r"deprecat|FutureWarning", line, re.IGNORECASE)]
    assert not flagged, flagged
    assert "/-2" not in output  # Lightning's Rich bar labels a step-bounded run "Epoch 0/-2"
    assert "policy exported in Hugging Face format" in output


def test_a_module_refusing_its_settings_is_one_short_paragraph(tmp_path):
    result = run_script(
        "fit",
        "--config",
        TINY,
        "--model.init_args.model",
        "tiny:random",
        "--model.init_args.quantization",
        "4bit",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 3 and "Traceback" not in result.stderr, result.stderr
    assert "`quantization` needs `lora`" in result.stderr and "r1_zero_tiny.yaml" in result.stderr


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("trainer:\n  max_steps: 3\n   bad: [\n")
    result = run_script("fit", "--config", TINY, "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}, line 3" in result.stderr and "<unicode string>" not in result.stderr, result.stderr


def test_unknown_subcommand_says_which_was_meant(tmp_path):
    result = run_script("fti", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'fit'?" in result.stderr


def test_a_reward_model_started_from_a_language_model_loads_quietly(capfd):
    from r1_lightning.rewards.reward_model_io import load_reward_model

    capfd.readouterr()
    load_reward_model("tiny:random")  # its new score head is missing from the checkpoint by design
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.out + captured.err
