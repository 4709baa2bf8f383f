"""Command line: ``r1-lightning fit|validate|test --config ...`` (LightningCLI), ``r1-lightning pipeline
--config ...`` (multi-stage runs, ``r1_lightning.pipeline``) and ``r1-lightning export``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import ArgsType, LightningCLI

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


def main(args: ArgsType = None) -> LightningCLI | None:
    """Entry point of the ``r1-lightning`` console script; tests call ``main([...])`` directly."""
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
    return LightningCLI(
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
