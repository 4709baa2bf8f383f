"""Command line: ``r1-lightning fit|validate|test --config ...`` (LightningCLI), ``r1-lightning pipeline
--config ...`` (multi-stage runs, ``r1_lightning.pipeline``) and ``r1-lightning export``."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from r1_lightning.grpo import GRPOModule


def export_main(args: list[str]) -> None:
    """``r1-lightning export --ckpt_path run.ckpt --out_dir folder``: a Lightning checkpoint -> HF folder."""
    parser = ArgumentParser(prog="r1-lightning export", description=export_main.__doc__)
    parser.add_argument("--ckpt_path", type=str, required=True, help="Lightning checkpoint written by fit")
    parser.add_argument("--out_dir", type=str, required=True, help="folder for save_pretrained output")
    cfg = parser.parse_args(args)
    if not Path(cfg.ckpt_path).exists():
        raise FileNotFoundError(f"checkpoint {cfg.ckpt_path!r} does not exist (from --ckpt_path)")
    module = GRPOModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu")
    module.save_hf(cfg.out_dir)


def suggest_keys(message: str, known: list[str] = ()) -> list[str]:
    """"Did you mean" hints for options jsonargparse refused: from the named class's parameters, or
    from ``known`` (the parser's own keys, e.g. ``trainer.max_steps``).

    >>> suggest_keys("Problem with given class_path 'r1_lightning.grpo.GRPOModule':\\n  Option 'lrr' is not accepted")
    ["'lrr' is not a parameter of r1_lightning.grpo.GRPOModule; did you mean 'lr'?"]
    """
    hints = []
    for class_path, option in re.findall(r"class_path '([\w.]+)'[^']*?Option '(\w+)' is not accepted", message, re.S):
        module_name, _, name = class_path.rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
        names = [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs")]
        close = difflib.get_close_matches(option, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"its parameters are {names}"
        hints.append(f"{option!r} is not a parameter of {class_path}; {hint}")
    refused = re.findall(r"does not accept option '([\w.]+)'", message)
    refused += re.findall(r"unrecognized arguments: --([\w.]+)", message)
    for option in refused:
        close = difflib.get_close_matches(option, known, n=1, cutoff=0.6)
        if close:
            hints.append(f"{option!r} is not a config key; did you mean {close[0]!r}?")
    return hints


class R1LightningCLI(LightningCLI):
    """LightningCLI whose refusals of unknown config keys say which key was meant."""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        parsers = [parser, *getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {}).values()]
        for each in parsers:
            each.exit_on_error = False
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            message = str(err)
            known = sorted({a.dest for each in parsers for a in each._actions if "." in a.dest})
            hints = suggest_keys(message, known)
            parser.exit_on_error = True
            parser.error("\n".join([*hints, message] if hints else [message]))


def console_main() -> None:
    """The ``r1-lightning`` console script. Returns None so that the script exits 0 after a run:
    its wrapper calls ``sys.exit(console_main())``, and ``sys.exit(<an object>)`` exits 1."""
    main()


def main(args: ArgsType = None) -> LightningCLI | None:
    """Run a subcommand and return the CLI (tests call ``main([...])`` and inspect the result)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "export":
        export_main(argv[1:])
        return None
    if argv and argv[0] == "pipeline":
        from r1_lightning.pipeline import pipeline_main

        pipeline_main(argv[1:])
        return None
    # Tokenizers' thread pool and forked DataLoader workers do not mix; prompts are cheap to tokenize.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Any LightningModule / DataModule by class_path: GRPOModule, SFTModule, RewardModelModule with
    # PromptDataModule, SFTDataModule, PreferenceDataModule.
    return R1LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
