"""The LightningCLI behind ``r1-lightning fit|validate|test|predict`` (imports Lightning and the
modules; ``r1_lightning.cli.main`` stays light so that ``--help`` is instant)."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

# Imported so that short class names (``--model GRPOModule``) and checkpoints' class paths resolve.
import r1_lightning.data  # noqa: F401
import r1_lightning.data.sft_data  # noqa: F401
import r1_lightning.training.grpo  # noqa: F401
import r1_lightning.training.reward_model  # noqa: F401
import r1_lightning.training.sft  # noqa: F401
from r1_lightning.callbacks.preemption import PreemptionCallback
from r1_lightning.callbacks.progress_bar import label_epochs_sensibly
from r1_lightning.runs.checkpoints import AtomicCheckpointIO, check_checkpoint
from r1_lightning.errors import ConfigError, config_files, instantiation_message
from r1_lightning.runs.resume import attach_to_resumed_run, get_key, resolve_resume, set_key

CSV_FLUSH_DEFAULT = 100  # Lightning's CSVLogger default: rows reached the disk every 100 steps


def suggest_keys(message: str, known: list[str] = ()) -> list[str]:
    """ "Did you mean" hints for options jsonargparse refused: from the named class's parameters, or
    from ``known`` (the parser's own keys, e.g. ``trainer.max_steps``).

    >>> suggest_keys("Problem with given class_path 'r1_lightning.training.grpo.GRPOModule':\\n  Option 'lrr' is not accepted")
    ["'lrr' is not a parameter of r1_lightning.training.grpo.GRPOModule; did you mean 'lr'?"]
    """
    import re

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
    """LightningCLI whose refusals of unknown config keys say which key was meant, and whose
    instantiation errors (a module refusing its settings) come as one :class:`ConfigError` line."""

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

    _resume: dict | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._argv = list(kwargs.get("args") or [])  # the command line, to name its config files in errors
        super().__init__(*args, **kwargs)

    def _parse_ckpt_path(self) -> None:
        # Lightning reads an explicit checkpoint here (for its hyperparameters): check it first, so a
        # bad file is named with what is wrong with it instead of a torch unpickling error.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and path not in ("last", "best", "hpc", "registry") and "://" not in str(path):
            check_checkpoint(path)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Metrics on disk at every logging step (`tail -f metrics.csv`, nothing lost to a kill), unless
        # the config sets another interval.
        trainer = get_key(config, "trainer")
        loggers = get_key(trainer, "logger")
        for node in loggers if isinstance(loggers, list) else [loggers]:
            args = get_key(node, "init_args")
            if get_key(node, "class_path", "").endswith("CSVLogger") and args is not None:
                if get_key(args, "flush_logs_every_n_steps") in (None, CSV_FLUSH_DEFAULT):
                    set_key(args, "flush_logs_every_n_steps", 1)
        # `last` resolves for every subcommand; only fit continues a run's logs
        resume = resolve_resume(config)
        self._resume = resume if self.subcommand in ("fit", None) else None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:
            # Lightning's own refusals of the hardware settings: an accelerator this machine lacks, a
            # strategy that cannot run on it, SLURM's --ntasks-per-node against trainer.devices, ...
            files = config_files(self._argv)
            source = f" (config: {', '.join(files)})" if files else ""
            raise ConfigError(
                f"the trainer's hardware settings cannot run here: {err} Check `trainer.accelerator`, "
                f"`trainer.strategy`, `trainer.devices` and `trainer.num_nodes`{source}"
            ) from err
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # (not a user's own plugin)
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        label_epochs_sensibly(trainer)
        if self.subcommand in ("fit", None) and not any(isinstance(c, PreemptionCallback) for c in trainer.callbacks):
            trainer.callbacks.append(PreemptionCallback())
        return trainer

    def before_fit(self) -> None:
        # The cluster's own check (SLURM: --ntasks-per-node against trainer.devices) runs inside fit's
        # launcher, as a traceback; run it first, as one line.
        environment = getattr(self.trainer.strategy, "cluster_environment", None)
        if environment is not None and hasattr(environment, "validate_settings"):
            try:
                environment.validate_settings(num_devices=self.trainer.num_devices, num_nodes=self.trainer.num_nodes)
            except ValueError as err:
                raise ConfigError(f"{err} (the launcher's settings against `trainer.devices` / `trainer.num_nodes`)") from None
        if self._resume is not None:
            attach_to_resumed_run(self.trainer, self._resume["step"])

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except (ValueError, TypeError, FileNotFoundError, OSError) as err:
            files = config_files(self._argv)
            source = f" (config: {', '.join(files)})" if files else ""
            raise ConfigError(f"{instantiation_message(err)}{source}") from err

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        epilog = (
            "The options of a model or data class: r1-lightning fit --model GRPOModule --help "
            "(or SFTModule, RewardModelModule; --data PromptDataModule --help)."
        )
        subparsers = getattr(getattr(self.parser, "_subcommands_action", None), "_name_parser_map", {})
        for parser in [self.parser, *subparsers.values()]:
            parser.epilog = epilog


def run_lightning_cli(args: list[str], run: bool = True) -> LightningCLI:
    """``fit``/``validate``/``test``/``predict`` through :class:`R1LightningCLI` (``run=False``: build the
    trainer, model and data from ``args`` without running, ``args`` then without the subcommand)."""
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
        run=run,
    )
