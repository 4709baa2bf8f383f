"""CompletionLogCallback: every rollout's prompts, completions, rewards and advantages in a local file (TRL's
``log_completions``), enabled by ``model.init_args.log_completions: true``.

One JSON line per completion in ``<log dir>/completions.jsonl``: ``step`` (the optimizer step the rollout
trained), ``rank``, ``prompt``, ``completion``, ``reward`` (the weighted sum), ``rewards`` (each function's
raw score; null where a function does not apply), ``advantage``. Rank 0 writes every rank's rows (gathered),
appending as it goes. Resume-safe: a run restored at step S first drops the lines of steps after S (what
the killed run wrote after its last checkpoint), so each step appears once, as the resumed run trained it.

W&B tables read from the file: with a ``WandbLogger``, every ``table_every_n_steps`` steps the step's lines are
read back (:func:`completions_table`: one column per reward function) and logged as the ``completions`` table;
``RewardLoggingCallback``'s sample table is then not logged (one source of truth). The same function turns
the file of an offline run into a table afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch


class CompletionLogCallback(L.Callback):
    """Append each step's completions to a JSONL file (see the module docstring).

    Args:
        path: the file (default ``<trainer.log_dir>/completions.jsonl``).
        table_every_n_steps: log the step's lines as a W&B table this often (0 = never; W&B loggers only).
    """

    def __init__(self, path: str | None = None, table_every_n_steps: int = 50) -> None:
        self.path = Path(path) if path else None
        self.table_every_n_steps = table_every_n_steps

    def _file(self, trainer: L.Trainer) -> Path:
        if self.path is None:
            self.path = Path(trainer.log_dir or trainer.default_root_dir) / "completions.jsonl"
        return self.path

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        path = self._file(trainer)
        if not trainer.is_global_zero or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if _step(line) <= trainer.global_step]
        temporary = path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        if rollout is None:
            return
        group = rollout.group_size
        rows = [
            {
                "step": trainer.global_step,
                "rank": trainer.global_rank,
                "prompt": str(batch["prompt"][i // group]),
                "completion": text,
                "reward": float(rollout.rewards[i]),
                "rewards": {name: scores[i] for name, scores in rollout.reward_scores.items()},
                "advantage": float(rollout.advantages[i]),
            }
            for i, text in enumerate(rollout.generation.texts)
        ]
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if trainer.is_global_zero:
            path = self._file(trainer)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
            every = self.table_every_n_steps
            if every and trainer.global_step % every == 0:
                self._log_table(trainer, path)

    def _log_table(self, trainer: L.Trainer, path: Path) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            columns, rows = completions_table(path, step=trainer.global_step)
            for logger in loggers:
                logger.log_text(key="completions", columns=columns, data=rows, step=trainer.global_step)


def completions_table(path: str | Path, step: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of a completions file (all steps, or one): step, rank, prompt, completion, reward,
    one column per reward function (in order of first appearance), advantage. Torn or foreign lines are
    skipped (the file of a killed run may end mid-line)."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            if step is None or int(record["step"]) == step:
                records.append(record)
        except (ValueError, KeyError, TypeError):
            continue
    names = list(dict.fromkeys(name for record in records for name in record.get("rewards", {})))
    columns = ["step", "rank", "prompt", "completion", "reward", *names, "advantage"]
    rows = [
        [r.get("step"), r.get("rank"), r.get("prompt"), r.get("completion"), r.get("reward"),
         *(r.get("rewards", {}).get(name) for name in names), r.get("advantage")]
        for r in records
    ]  # fmt: skip
    return columns, rows


def _step(line: str) -> int:
    """The step of a logged line (a torn last line, from a kill mid-write, counts as after every step)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
