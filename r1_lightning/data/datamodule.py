"""``PromptDataModule``: streams prompt records, renders them with a template, batches them as lists."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from r1_lightning.data.sources import SHOWN_BAD_ROWS, DatasetSource, PromptSource
from r1_lightning.data.tasks import ArithmeticTask
from r1_lightning.data.templates import render_prompt
from r1_lightning.errors import ConfigError

log = logging.getLogger(__name__)


def collate_records(records: list[dict]) -> dict[str, list]:
    """A batch is a dict of equal-length lists, one per column (what reward functions receive)."""
    keys = list(records[0])
    for record in records[1:]:
        if list(record) != keys:
            missing = set(keys) ^ set(record)
            raise ValueError(f"records in one batch have different columns: {sorted(missing)}")
    return {key: [record[key] for record in records] for key in keys}


def _shard() -> tuple[int, int]:
    """(index, count) of this reader among all ranks x dataloader workers, so none reads the same prompt."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    return rank * workers + worker, world * workers


class HeldOutRecords(IterableDataset):
    """The held-out records in order, the same on every rank (see ``PromptDataModule.val_dataloader``)."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


#: epoch keys of dynamic sampling's extra draws start here, far from the main stream's passes
EXTRA_EPOCHS = 100_000_000


class PromptStream(IterableDataset):
    """Endless stream of rendered training records; reshuffled each pass over a finite source.

    The stream is a pure function of the source, ``seed`` and the shard, so resuming is exact: it replays
    (without yielding) the records of the batches a restored checkpoint had already trained on.
    """

    def __init__(self, datamodule: PromptDataModule, start_batch: int | None = None, count_skips: bool = True) -> None:
        self.dm, self.start_batch, self.count_skips = datamodule, start_batch, count_skips

    def __iter__(self) -> Iterator[dict]:
        index, count = _shard()
        start = self.dm.batches_consumed if self.start_batch is None else self.start_batch
        to_skip = start * self.dm.batch_size
        epoch, position = 0, 0
        while True:
            produced = False
            for record in self.dm.source.iter_train(self.dm.seed, epoch):
                produced = True
                position += 1
                if (position - 1) % count != index:
                    continue
                rendered = self.dm.render(record, count_skips=self.count_skips and to_skip == 0)
                if rendered is None:
                    continue
                if to_skip:
                    to_skip -= 1
                    continue
                yield rendered
            if not produced:
                raise ValueError("the training prompt source yielded no records; check the dataset and split")
            epoch += 1


class PromptDataModule(L.LightningDataModule):
    """Prompt records for RL: ``{"prompt": rendered text, "answer": ..., <extra columns>}`` batches.

    Args:
        source: where records come from: ``ArithmeticTask``, ``CountdownTask``, ``HubSource``,
            ``FileSource`` (``class_path`` + ``init_args`` in YAML).
        template: ``r1_zero`` (the R1-Zero template, verbatim), ``chat`` (the tokenizer's chat
            template), ``plain``, or a format string containing ``{prompt}``.
        system_prompt: system message for the chat template (prepended line for text templates).
        batch_size: prompts per training step (each gets ``num_generations`` completions).
        val_batch_size: prompts per validation batch.
        max_prompt_tokens: prompts longer than this many tokens after the template are skipped
            (counted as ``train/skipped_rows/prompt_too_long`` and logged); ``null`` for no limit.
            The default, 2048, keeps a stray huge row (a pasted document) out of the model while
            leaving room for long math and code problems.
        seed: seeds shuffling and procedural generation.
    """

    def __init__(
        self,
        source: PromptSource | None = None,
        template: str = "r1_zero",
        system_prompt: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 16,
        max_prompt_tokens: int | None = 2048,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.source = source if source is not None else ArithmeticTask()
        self.template, self.system_prompt = template, system_prompt
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.max_prompt_tokens, self.seed = max_prompt_tokens, seed
        self.tokenizer: Any = None
        self.tool_schemas: list[dict] | None = None
        self.skipped_long_prompts = 0
        # Training batches handed to the model so far; saved in checkpoints so a resumed run continues
        # the prompt stream where it stopped (no prompt repeated or skipped).
        self.batches_consumed = 0

    def state_dict(self) -> dict[str, Any]:
        return {"batches_consumed": self.batches_consumed, "skipped_long_prompts": self.skipped_long_prompts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_consumed = int(state_dict.get("batches_consumed", 0))
        self.skipped_long_prompts = int(state_dict.get("skipped_long_prompts", 0))
        if self.batches_consumed:
            log.info("prompt stream resumes after %d consumed batches", self.batches_consumed)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called once per batch, when the loop takes it for a step (the loader may prefetch further).
        if self.trainer is not None and self.trainer.training:
            self.batches_consumed += 1
        return batch

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None and self.trainer is not None:
            self.tokenizer = getattr(self.trainer.lightning_module, "tokenizer", None)
        toolbox = getattr(self.trainer.lightning_module, "toolbox", None) if self.trainer is not None else None
        self.tool_schemas = toolbox.schemas if toolbox is not None else None  # rendered by chat templates
        if toolbox is not None and self.template == "chat" and self.tokenizer is not None:
            # Prompts are chat turns, so a tool's response is one too, as the template renders it (TRL's way).
            toolbox.use_chat_template(self.tokenizer)
        if stage in ("fit", None):
            self.check_training_rows()

    def skipped_rows(self) -> dict[str, int]:
        """Rows skipped so far, per reason (the source's, plus prompts over ``max_prompt_tokens``)."""
        counts = dict(getattr(self.source, "skipped_rows", {}) or {})
        if self.skipped_long_prompts:
            counts["prompt_too_long"] = self.skipped_long_prompts
        return counts

    def check_training_rows(self) -> None:
        """Fail at start-up, in one message naming the setting, when no training prompt can come out
        of the source (every row bad, every prompt too long, or every row held out for validation)."""
        for record in self.source.iter_train(self.seed, 0):
            if self.render(record, count_skips=False) is not None:
                return
        skipped = dict(getattr(self.source, "skipped_rows", {}) or {})
        describe = self.source.describe() if isinstance(self.source, DatasetSource) else type(self.source).__name__
        if isinstance(self.source, DatasetSource) and self.source.val_split is None:
            held_out = len(self.source.val_records(self.seed))
            if held_out and not skipped:
                raise ConfigError(
                    f"no training rows left in {describe}: all {held_out} usable rows are held out for validation "
                    f"by the source's `val_size: {self.source.val_size}`; lower `val_size` below the number of rows, "
                    "or give separate validation data (`val_path` / `val_split`)"
                )
        if skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            raise ConfigError(
                f"every row of {describe} is unusable ({reasons}); check the source's `prompt_column` / "
                "`answer_column` / `answer_parser` (the first bad rows are shown above)"
            )
        if self.max_prompt_tokens is not None:
            raise ConfigError(
                f"every prompt of {describe} is longer than `data.max_prompt_tokens: "
                f"{self.max_prompt_tokens}` tokens after the template; raise it"
            )
        raise ConfigError(f"the training prompt source {describe} yielded no records; check the dataset and split")

    def render(self, record: dict, count_skips: bool = True) -> dict | None:
        """Apply the template; returns None (and counts it) for prompts over ``max_prompt_tokens``."""
        if "prompt" not in record:
            raise ValueError(f"a prompt record has no 'prompt' field (fields: {sorted(record)})")
        text = render_prompt(record["prompt"], self.template, self.tokenizer, self.system_prompt, self.tool_schemas)
        if self.max_prompt_tokens is not None and self.tokenizer is not None:
            length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if length > self.max_prompt_tokens:
                if not count_skips:  # replaying records a resumed run already went through
                    return None
                self.skipped_long_prompts += 1
                if self.skipped_long_prompts <= SHOWN_BAD_ROWS:
                    log.warning(
                        "skipped a prompt of %d tokens > data.max_prompt_tokens=%d (%d skipped so far%s): %r",
                        length,
                        self.max_prompt_tokens,
                        self.skipped_long_prompts,
                        "; further ones are only counted" if self.skipped_long_prompts == SHOWN_BAD_ROWS else "",
                        str(record["prompt"])[:80],
                    )
                return None
        return {**record, "raw_prompt": record["prompt"], "prompt": text}

    def prompt_batches(self, start: int) -> Iterator[dict[str, list]]:
        """The training batches from batch ``start`` (0-based) on, exactly as the train loader gives them, for
        reading the stream ahead (asynchronous rollouts); skipped rows are counted by the loader's pass only."""
        stream = iter(PromptStream(self, start_batch=start, count_skips=False))
        while True:
            yield collate_records([next(stream) for _ in range(self.batch_size)])

    def extra_batch(self, step: int, draw: int) -> dict[str, list]:
        """``batch_size`` more rendered training records for dynamic sampling's ``draw``-th extra batch of
        ``step``: this rank's share of a pass of the source of its own (epoch key ``step``, ``draw``), so a
        resumed or re-run step draws the same ones and ranks draw different ones. Not taken from the main
        stream, which stays as without dynamic sampling (its position is what checkpoints save)."""
        index, count = _shard()
        records: list[dict] = []
        epoch = EXTRA_EPOCHS + step * 1000 + draw
        for position, record in enumerate(self.source.iter_train(self.seed, epoch)):
            if position % count != index:
                continue
            rendered = self.render(record, count_skips=False)
            if rendered is not None:
                records.append(rendered)
            if len(records) == self.batch_size:
                return collate_records(records)
        if not records:
            raise ValueError("the training prompt source yielded no records; check the dataset and split")
        return collate_records(records)  # a finite source smaller than a batch: all of its share

    def val_records(self) -> list[dict]:
        records = [r for r in map(self.render, self.source.val_records(self.seed)) if r is not None]
        if not records:
            raise ValueError("the validation split is empty; set the source's `val_size` / `val_split`")
        return records

    def _generator(self) -> torch.Generator:
        # A loader without its own generator draws its base seed from the global RNG each time it is
        # iterated, so a validation run would shift the training rollouts' random stream.
        return torch.Generator().manual_seed(self.seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            PromptStream(self), batch_size=self.batch_size, collate_fn=collate_records, generator=self._generator()
        )

    def val_dataloader(self) -> DataLoader:
        # Every rank sees every held-out batch in the same order and evaluates its share by batch index
        # (GRPOEvaluation.evaluate_batch): no DistributedSampler (an iterable dataset gets none), which
        # would pad the set with repeats and change batch composition, and so the samples, with the
        # number of ranks. A held-out problem is evaluated once, as in a 1-rank run.
        return DataLoader(
            HeldOutRecords(self.val_records()),
            batch_size=self.val_batch_size,
            collate_fn=collate_records,
            generator=self._generator(),
        )
