"""``SFTDataModule``: prompt/response records -> token batches with a completion-only loss mask.

Used by R1's three supervised stages: the cold start (long chains of thought), the SFT on
rejection-sampled + non-reasoning data, and distillation into a small model.

Prompts are rendered with the same templates as RL (``r1_zero``, ``chat``, a format string), so a model
is trained on exactly the text it will later continue. Labels are -100 on prompt and padding tokens,
so only response tokens (and the EOS appended to each) carry loss.

Packing (``packing: true``) concatenates examples into rows of at most ``max_length`` tokens; each row
carries ``segment_ids`` so the model attends only within an example (a block-diagonal causal mask) and
positions restart at each example: the loss is that of the unpacked batch, with no padding compute.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from r1_lightning.data.records import ArithmeticCoTTask, RecordSource, text_records
from r1_lightning.data.templates import render_prompt
from r1_lightning.errors import ConfigError

log = logging.getLogger(__name__)


def pack_examples(
    examples: list[tuple[list[int], list[int]]], max_length: int
) -> list[list[tuple[list[int], list[int]]]]:
    """Greedy first-fit packing of ``(input_ids, labels)`` examples into rows of <= ``max_length`` tokens.

    >>> [len(row) for row in pack_examples([([1] * 3, [1] * 3), ([2] * 2, [2] * 2), ([3] * 4, [3] * 4)], 5)]
    [2, 1]
    """
    rows: list[list[tuple[list[int], list[int]]]] = []
    room: list[int] = []
    for example in examples:
        size = len(example[0])
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            rows.append([example])
            room.append(max_length - size)
        else:
            rows[slot].append(example)
            room[slot] -= size
    return rows


class SFTDataModule(L.LightningDataModule):
    """Supervised fine-tuning data: ``{prompt, response}`` records, completion-only loss.

    Args:
        source: records: ``ArithmeticCoTTask`` (generated cold-start data), ``DatasetRecords`` (a file
            or the folder a rejection-sampling stage wrote), ``NonReasoningTask``, ``ConcatRecords``.
        prompt_column: column with the prompt (string or chat messages).
        response_column: column with the target response.
        template: ``r1_zero``, ``chat``, ``plain`` or a ``{prompt}`` format string (as in RL).
        system_prompt: system message for the chat template.
        max_length: token limit per example; longer examples are cut from the right (counted, logged).
        packing: pack several examples per row (block-diagonal attention; no padding compute).
        batch_size: rows per step.
        val_size: records held out to measure the validation loss.
        seed: shuffling seed (None: the run's ``seed_everything``, so one seed controls the whole run;
            without it 0).
    """

    def __init__(
        self,
        source: RecordSource | None = None,
        prompt_column: str = "prompt",
        response_column: str = "response",
        template: str = "r1_zero",
        system_prompt: str | None = None,
        max_length: int = 512,
        packing: bool = False,
        batch_size: int = 16,
        val_size: int = 32,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.source = source if source is not None else ArithmeticCoTTask()
        self.prompt_column, self.response_column = prompt_column, response_column
        self.template, self.system_prompt = template, system_prompt
        self.max_length, self.packing, self.batch_size = max_length, packing, batch_size
        self.val_size, self.seed = val_size, seed
        self.tokenizer: Any = None
        self.truncated = 0
        self.train_rows: list = []
        self.val_rows: list = []

    def encode(self, record: dict) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of one record; labels are -100 on the prompt."""
        prompt = render_prompt(record[self.prompt_column], self.template, self.tokenizer, self.system_prompt)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = self.tokenizer(str(record[self.response_column]), add_special_tokens=False)["input_ids"]
        response_ids = response_ids + [self.tokenizer.eos_token_id]
        ids, labels = prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids
        if len(ids) > self.max_length:
            self.truncated += 1
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return ids, labels

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
        if self.train_rows:
            return
        records, self.skipped_rows = text_records(
            self.source.records(), [self.prompt_column, self.response_column], f"SFT data from {self.source!r}"
        )
        if self.seed is None:  # the run's seed_everything (Lightning exports it), resolved once it is set
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        random.Random(self.seed).shuffle(records)
        if len(records) <= self.val_size:
            raise ConfigError(
                f"SFT data has {len(records)} usable records, not more than `data.val_size`={self.val_size}; "
                "lower `data.val_size` or give more data"
            )
        self.truncated = 0
        val, train = records[: self.val_size], records[self.val_size :]
        train_examples = [self.encode(r) for r in train]
        self.val_rows = [[self.encode(r)] for r in val]
        self.train_rows = (
            pack_examples(train_examples, self.max_length) if self.packing else [[e] for e in train_examples]
        )
        if self.truncated:
            log.warning(
                "SFT: %d of %d examples were longer than data.max_length=%d and were cut",
                self.truncated,
                len(records),
                self.max_length,
            )
        log.info(
            "SFT data: %d train examples in %d rows, %d validation", len(train_examples), len(self.train_rows), len(val)
        )

    def collate(self, rows: list[list[tuple[list[int], list[int]]]]) -> dict[str, torch.Tensor]:
        width = max(sum(len(ids) for ids, _ in row) for row in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        segments = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            start = 0
            for segment, (ids, target) in enumerate(row):
                end = start + len(ids)
                input_ids[i, start:end], labels[i, start:end] = torch.tensor(ids), torch.tensor(target)
                segments[i, start:end], positions[i, start:end] = segment, torch.arange(len(ids))
                start = end
        return {"input_ids": input_ids, "labels": labels, "segment_ids": segments, "position_ids": positions}

    @override
    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_rows, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate, generator=generator
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_rows, batch_size=self.batch_size, collate_fn=self.collate)
