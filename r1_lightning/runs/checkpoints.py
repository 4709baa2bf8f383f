"""Checkpoints a user can trust: checked before loading (a bad file is named with what is wrong with
it), ``last`` resolved to the newest intact one, and any module's checkpoint loadable for export.

A Lightning checkpoint written by ``torch.save`` is a zip archive: an empty file, a file cut short by
a full disk or a kill, and a file that is not a checkpoint at all are told apart without unpickling.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from r1_lightning.errors import ConfigError

log = logging.getLogger(__name__)

# The modules that train a policy or a reward model.
MODULE_CLASSES = (
    "r1_lightning.training.grpo.GRPOModule",
    "r1_lightning.training.sft.SFTModule",
    "r1_lightning.training.reward_model.RewardModelModule",
)


WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file and the reason."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that never leave a partial file under a checkpoint's name.

    Lightning's writer stages the file through ``tempfile`` (usually ``/tmp``, often another, smaller
    file system) and moves it into place: across file systems the move is a copy, and a full disk
    during that copy leaves a truncated checkpoint under its final name. Here the file is written
    next to its target (``.<name>.tmp-<pid>``, ignored by ``--ckpt_path last``), flushed to disk and
    renamed over the target, which is atomic on one file system. On failure the partial file is
    removed, earlier checkpoints are untouched, and :class:`CheckpointWriteError` names the path and
    the reason (disk full, quota, permissions). Remote paths (``s3://``) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        text = str(path)
        if "://" in text and not text.startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(text.removeprefix("file://"))
        partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        except OSError as err:
            partial.unlink(missing_ok=True)
            reason = WRITE_FAILURES.get(err.errno, str(err))
            raise CheckpointWriteError(
                err.errno,
                f"could not write checkpoint {target}: {reason}. The earlier checkpoints in "
                f"{target.parent} are intact; make room (or fix the permissions) and resume with --ckpt_path last",
            ) from err


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with the checkpoint at ``path`` (None when it looks intact).

    Reads the whole archive once to verify its checksums; never unpickles it.
    """
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():  # a sharded (FSDP2 / distributed checkpoint) folder
        return None if (path / ".metadata").exists() else "is a folder without a distributed checkpoint's .metadata"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): its write was interrupted (full disk or a kill)"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head[:2] == b"PK":
            return f"is truncated ({size} bytes; the write did not finish)"
        return f"is not a PyTorch checkpoint ({size} bytes that torch.save did not write)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"is corrupt ({err})"
    if bad is not None:
        return f"is corrupt (record {bad!r} fails its checksum)"
    return None


def check_checkpoint(path: str | Path, setting: str = "--ckpt_path") -> None:
    """Raise a :class:`ConfigError` naming ``path`` and the problem, if it has one."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ConfigError(
            f"checkpoint {str(path)!r} (from {setting}) {problem}; pass another checkpoint, or "
            "`--ckpt_path last` to take the newest intact one"
        )


def newest_intact_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint in ``folder`` that is intact, warning about each newer broken one.

    Ordered by the training step recorded in the name (``step=N`` / ``step-N``), ``last.ckpt`` first
    among equals, then by modification time.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.iterdir() if p.suffix == ".ckpt" and not p.name.startswith(".")]
    steps = {p: int(m.group(1)) if (m := re.search(r"step[=-](\d+)", p.name)) else -1 for p in candidates}
    newest = max(steps.values(), default=-1)

    def order(path: Path) -> tuple[int, bool, float]:
        is_last = path.name.startswith("last")  # no step in its name: at least as new as any step file
        return (newest if is_last else steps[path], is_last, path.stat().st_mtime)

    for path in sorted(candidates, key=order, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s %s; trying an older one", path, problem)
    return None


def module_class_path(checkpoint: dict[str, Any]) -> str:
    """The class path of the module a loaded checkpoint belongs to."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if hparams.get("_class_path"):  # recorded by LightningCLI
        return hparams["_class_path"]
    # Written without LightningCLI: told apart by what only each one has.
    if "num_generations" in hparams:
        return "r1_lightning.training.grpo.GRPOModule"
    if any(key.startswith("model.") for key in checkpoint.get("state_dict", {})):
        return "r1_lightning.training.reward_model.RewardModelModule"
    return "r1_lightning.training.sft.SFTModule"


def load_module_from_checkpoint(path: str | Path) -> Any:
    """Any of this project's modules from its Lightning checkpoint (GRPO, SFT, reward model)."""
    import importlib

    check_checkpoint(path)
    # Only its class is read here (memory-mapped: the weights are not read until the module loads them).
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if "state_dict" not in checkpoint or "pytorch-lightning_version" not in checkpoint:
        raise ConfigError(
            f"checkpoint {str(path)!r} is not a Lightning checkpoint (no state_dict); "
            "export takes what `r1-lightning fit` writes"
        )
    class_path = module_class_path(checkpoint)
    if class_path not in MODULE_CLASSES:
        raise ConfigError(
            f"checkpoint {str(path)!r} belongs to {class_path}, which export does not know; it exports "
            f"{', '.join(MODULE_CLASSES)}"
        )
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls.load_from_checkpoint(path, map_location="cpu")
