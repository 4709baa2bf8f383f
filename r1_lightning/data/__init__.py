"""Prompt data: sources (hub, files, procedural tasks), templates and the DataModule."""

from r1_lightning.data.datamodule import PromptDataModule, collate_records
from r1_lightning.data.reasoning_gym import ReasoningGymTask
from r1_lightning.data.sources import FileSource, HubSource, PromptSource, parse_gsm8k_answer
from r1_lightning.data.tasks import ArithmeticTask, CarryAdditionTask, CountdownTask
from r1_lightning.data.templates import R1_ZERO_TEMPLATE, render_prompt

__all__ = [
    "ArithmeticTask",
    "CarryAdditionTask",
    "CountdownTask",
    "FileSource",
    "HubSource",
    "PromptDataModule",
    "PromptSource",
    "ReasoningGymTask",
    "R1_ZERO_TEMPLATE",
    "collate_records",
    "parse_gsm8k_answer",
    "render_prompt",
]
