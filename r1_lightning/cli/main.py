"""Command line: ``r1-lightning fit|validate|test|predict`` (LightningCLI), ``r1-lightning pipeline``
(multi-stage runs) and ``r1-lightning export`` (checkpoint -> Hugging Face folder).

This module imports nothing heavy at the top: ``r1-lightning --help`` answers at once, and each
subcommand imports what it needs (Lightning, torch, transformers take seconds to import).
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
from typing import Any

# (errors.py imports only the standard library: --help stays instant)
from r1_lightning.errors import ConfigError, check_yaml_file, config_files

SUBCOMMANDS = {
    "fit": "train a model from a config: GRPO (R1-Zero / reasoning RL), SFT, reward model",
    "validate": "evaluate a model on its validation set (held-out pass@1, maj@k, format)",
    "test": "run a model's test loop",
    "predict": "run a model's predict loop",
    "pipeline": "run a multi-stage R1 recipe from one YAML (cold start, RL, rejection sampling, SFT, ...)",
    "export": "write a fit checkpoint (GRPO, SFT or reward model) as a Hugging Face folder",
    "evaluate": "score a Hugging Face model folder on a benchmark file (problem/answer columns), R1's protocol",
}

USAGE = """usage: r1-lightning {fit,validate,test,predict,pipeline,export,evaluate} [options]

DeepSeek-R1's reinforcement-learning recipe (GRPO, rule rewards, R1-Zero) on PyTorch Lightning.

subcommands:
%s

Examples:
  r1-lightning fit --config configs/r1_zero_tiny.yaml          the embedded default (offline, CPU)
  r1-lightning fit --config configs/r1_zero_tiny.yaml --ckpt_path last    resume it
  r1-lightning pipeline --config configs/pipeline/r1_tiny.yaml the whole R1 pipeline
  r1-lightning fit --help                                      trainer and config options
  r1-lightning fit --model GRPOModule --help                   every GRPO option (or SFTModule,
                                                               RewardModelModule; --data PromptDataModule)
  r1-lightning evaluate --model runs/.../hf_model --benchmark math500.jsonl   pass@1 ± CI, pass@k, maj@k
  r1-lightning pipeline --help / r1-lightning export --help / r1-lightning evaluate --help
"""


def top_level_help() -> str:
    width = max(map(len, SUBCOMMANDS))
    return USAGE % "\n".join(f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items())


def class_help_args(argv: list[str]) -> list[str]:
    """``fit --model GRPOModule --help`` -> ``fit --model.help GRPOModule`` (jsonargparse's spelling),
    so the options of a model or data class are one documented command away.

    >>> class_help_args(["fit", "--model", "GRPOModule", "--help"])
    ['fit', '--model.help', 'GRPOModule']
    >>> class_help_args(["fit", "--help"])
    ['fit', '--help']
    """
    if not any(a in ("-h", "--help") for a in argv):
        return argv
    for key in ("--model", "--data"):
        if key in argv[:-1]:
            target = argv[argv.index(key) + 1]
            if not target.startswith("-"):
                return [argv[0], f"{key}.help", target]
    return argv


def export_main(args: list[str]) -> None:
    """``r1-lightning export --ckpt_path run.ckpt --out_dir folder``: a checkpoint of any module that
    trains a policy or a reward model (GRPO, SFT, reward model) -> a Hugging Face folder."""
    from jsonargparse import ArgumentParser

    from r1_lightning.runs.checkpoints import load_module_from_checkpoint

    parser = ArgumentParser(prog="r1-lightning export", description=export_main.__doc__)
    parser.add_argument("--ckpt_path", type=str, required=True, help="Lightning checkpoint written by fit")
    parser.add_argument("--out_dir", type=str, required=True, help="folder for save_pretrained output")
    cfg = parser.parse_args(args)
    module = load_module_from_checkpoint(cfg.ckpt_path)
    module.save_hf(cfg.out_dir)
    print(f"{type(module).__name__} from {cfg.ckpt_path} exported to {cfg.out_dir}")


def main(args: list[str] | None = None) -> Any:
    """Run a subcommand; returns the LightningCLI for fit/validate/test/predict (tests inspect it)."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return None
    # Heavy imports from here on (the reason they are not at the top: instant --help).
    from r1_lightning.console import quiet_console

    quiet_console()
    if argv[0] == "export":
        export_main(argv[1:])
        return None
    if argv[0] == "evaluate":
        from r1_lightning.evaluation.benchmark import evaluate_main

        evaluate_main(argv[1:])
        return None
    if argv[0] == "pipeline":
        from r1_lightning.pipeline.runner import pipeline_main

        pipeline_main(argv[1:])
        return None
    if argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        close = difflib.get_close_matches(argv[0], list(SUBCOMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown subcommand {argv[0]!r}{hint} (subcommands: {', '.join(SUBCOMMANDS)})")
    from r1_lightning.runs.lightning_cli import run_lightning_cli

    for path in config_files(argv):
        check_yaml_file(path)
    return run_lightning_cli(class_help_args(argv))


def resume_command(argv: list[str]) -> str:
    """The command that continues an interrupted run: the same one, with ``--ckpt_path last`` for a
    ``fit`` (a pipeline resumes its unfinished stage by itself).

    >>> resume_command(["fit", "--config", "a.yaml", "--ckpt_path", "x.ckpt"])
    'r1-lightning fit --config a.yaml --ckpt_path last'
    >>> resume_command(["pipeline", "--config", "p.yaml"])
    'r1-lightning pipeline --config p.yaml'
    """
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        args.append(arg)
    if args and args[0] == "fit":
        args += ["--ckpt_path", "last"]
    return shlex.join(["r1-lightning", *args])


def console_main() -> int:
    """The ``r1-lightning`` console script: exit 0 after a run; 2 with a one-paragraph message on a
    configuration, data or path error (``R1_LIGHTNING_TRACEBACK=1`` or ``R1_LIGHTNING_VERBOSE=1`` shows
    its traceback); 128 + the signal (143 for
    SIGTERM, 130 for Ctrl-C) when a signal stopped the run after a checkpoint, with the resume command."""
    try:
        main()
    except ConfigError as err:
        if "1" in (os.environ.get("R1_LIGHTNING_TRACEBACK"), os.environ.get("R1_LIGHTNING_VERBOSE")):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # (these classes live with Lightning's imports, which this module does not make)
        if type(err).__name__ == "CheckpointWriteError":
            print(f"error: {err.strerror}", file=sys.stderr, flush=True)
            return 1
        if type(err).__name__ != "Preempted":
            raise
        print(f"{err}\nresume with: {resume_command(sys.argv[1:])}", file=sys.stderr, flush=True)
        return 128 + err.signum
    return 0


if __name__ == "__main__":
    sys.exit(console_main())
