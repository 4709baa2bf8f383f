"""``--ckpt_path last``: find the run to continue, continue it in the same folder.

Where checkpoints live (decided here, documented in the README): a run's checkpoints are in its
logger folder, ``<save_dir>/<name>/version_N/checkpoints`` (or a ``ModelCheckpoint`` ``dirpath`` the
config sets). A fresh run gets a new ``version_N``; ``--ckpt_path last`` instead

1. looks in every ``version_*/checkpoints`` of the configured logger (or the fixed ``dirpath``) and
   takes the newest *intact* checkpoint (a truncated or empty one is skipped with a warning);
2. sets the logger's ``version`` to that run's, so the resumed run writes into the same folder:
   its ``metrics.csv`` continues (rows the killed run logged after the checkpoint's step are dropped,
   since the resumed run logs those steps again), checkpoints and ``hf_model/`` land beside the earlier ones;
3. starts from scratch, saying so, when no checkpoint exists yet (so a job script can always pass
   ``--ckpt_path last``, from its first launch on).
"""

from __future__ import annotations

import csv
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import CSVLogger

from r1_lightning.runs.checkpoints import newest_intact_checkpoint

log = logging.getLogger(__name__)

VERSIONED_LOGGERS = ("CSVLogger", "TensorBoardLogger")


def get_key(node: Any, key: str, default: Any = None) -> Any:
    """``node[key]`` for a dict or a jsonargparse Namespace."""
    if node is None:
        return default
    if isinstance(node, dict):
        return node.get(key, default)
    return getattr(node, key, default)


def set_key(node: Any, key: str, value: Any) -> None:
    if isinstance(node, dict):
        node[key] = value
    else:
        setattr(node, key, value)


def run_logger(trainer_config: Any) -> Any | None:
    """The first logger of a trainer config that keeps ``version_N`` folders (its config node)."""
    loggers = get_key(trainer_config, "logger")
    for node in loggers if isinstance(loggers, list) else [loggers]:
        if get_key(node, "class_path", "").rsplit(".", 1)[-1] in VERSIONED_LOGGERS:
            return node
    return None


def checkpoint_folders(trainer_config: Any) -> list[tuple[Path, int | None]]:
    """Where a run of this config keeps checkpoints: ``(folder, logger version)`` pairs, newest first."""
    fixed = []
    for callback in get_key(trainer_config, "callbacks") or []:
        if get_key(callback, "class_path", "").endswith("ModelCheckpoint"):
            dirpath = get_key(get_key(callback, "init_args"), "dirpath")
            if dirpath:
                fixed.append((Path(dirpath), None))
    if fixed:
        return fixed
    logger = run_logger(trainer_config)
    root_dir = Path(get_key(trainer_config, "default_root_dir") or ".")
    if logger is None:
        if get_key(trainer_config, "logger") in (None, True):  # Lightning's default logger
            base = root_dir / "lightning_logs"
        else:
            return [(root_dir / "checkpoints", None)]
    else:
        args = get_key(logger, "init_args") or {}
        base = logger_base(trainer_config)
        version = get_key(args, "version")
        if version is not None:
            folder = base / (version if isinstance(version, str) else f"version_{version}")
            return [(folder / "checkpoints", version)]
    versions = []
    for folder in base.glob("version_*"):
        match = re.fullmatch(r"version_(\d+)", folder.name)
        if match:
            versions.append((int(match.group(1)), folder / "checkpoints"))
    return [(folder, number) for number, folder in sorted(versions, reverse=True)]


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` a checkpoint was written at (memory-mapped: the weights are not read)."""
    if path.is_dir():  # a sharded checkpoint: its step is in the name Lightning gave it, if any
        match = re.search(r"step[=-](\d+)", path.name)
        return int(match.group(1)) if match else -1
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", -1))


def logger_base(trainer_config: Any) -> Path | None:
    """``<save_dir>/<name>`` of the config's versioned logger (where its ``version_N`` folders are)."""
    logger = run_logger(trainer_config)
    if logger is None:
        return None
    args = get_key(logger, "init_args") or {}
    root_dir = Path(get_key(trainer_config, "default_root_dir") or ".")
    return Path(get_key(args, "save_dir") or root_dir) / (get_key(args, "name") or "lightning_logs")


def resume_into(config: Any, checkpoint: Path, version: int | None) -> dict[str, Any]:
    """Point ``config`` at ``checkpoint`` and its logger at the run it came from."""
    trainer = get_key(config, "trainer")
    if version is None:  # an explicit checkpoint inside one of this config's runs continues that run
        base, parts = logger_base(trainer), checkpoint.resolve().parts
        match = re.fullmatch(r"version_(\d+)", parts[-3]) if len(parts) >= 3 and parts[-2] == "checkpoints" else None
        if base is not None and match and checkpoint.resolve().parents[2] == base.resolve():
            version = int(match.group(1))
    logger = run_logger(trainer)
    if logger is not None and version is not None:
        args = get_key(logger, "init_args")
        if args is None:
            args = {}
            set_key(logger, "init_args", args)
        set_key(args, "version", version)
    set_key(config, "ckpt_path", str(checkpoint))
    step = checkpoint_step(checkpoint)
    print(f"resuming from {checkpoint} (step {step})", file=sys.stderr, flush=True)
    return {"checkpoint": str(checkpoint), "step": step}


def resolve_resume(config: Any) -> dict[str, Any] | None:
    """Rewrite ``config`` (one subcommand's) for ``--ckpt_path last`` or an explicit path, in place.

    Returns ``{"checkpoint", "step"}`` when a run is resumed, None when it starts fresh. (An explicit
    checkpoint has been checked by the CLI already: ``checkpoints.check_checkpoint``.)
    """
    ckpt_path = get_key(config, "ckpt_path")
    if ckpt_path is None or ckpt_path in ("best", "hpc", "registry") or "://" in str(ckpt_path):
        return None
    trainer = get_key(config, "trainer")
    if ckpt_path != "last":
        return resume_into(config, Path(ckpt_path), None)
    folders = checkpoint_folders(trainer)
    for folder, version in folders:
        found = newest_intact_checkpoint(folder)
        if found is not None:
            return resume_into(config, found, version)
    searched = ", ".join(str(f) for f, _ in folders) or "(no checkpoint folder configured)"
    print(f"--ckpt_path last: no intact checkpoint in {searched}; starting from step 0", file=sys.stderr, flush=True)
    set_key(config, "ckpt_path", None)
    return None


def continue_metrics(metrics_file: Path, step: int) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of ``metrics.csv`` a resumed run keeps: those logged up to ``step`` (the
    checkpoint's: row ``k`` holds step ``k``'s training metrics); the killed run's later rows are
    logged again by the resumed run."""
    if not metrics_file.exists():
        return [], []
    with metrics_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if row.get("step", "") == "" or int(float(row["step"])) <= step]
    return header, rows


def attach_to_resumed_run(trainer: Any, step: int) -> None:
    """Continue the resumed run's ``metrics.csv`` (same file, same columns) in every CSV logger.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it is created; the rows to keep
    are read first and written back under the writer, which then appends. Rank 0 alone does this: the
    loggers write on rank 0 only, and two ranks rewriting one file would race.
    """
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        metrics_file = Path(logger.log_dir) / "metrics.csv"
        header, rows = continue_metrics(metrics_file, step)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted.*")
            writer = logger.experiment
        if not header:
            continue
        tmp = metrics_file.with_name(metrics_file.name + ".tmp")
        with tmp.open("w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        tmp.replace(metrics_file)
        writer.metrics_keys = list(header)
