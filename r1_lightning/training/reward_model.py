"""Reward models for R1's all-scenario RL stage: Bradley-Terry training on preference pairs.

R1's last RL stage adds model-based rewards for general data: a *helpfulness* model that judges only
the final summary (so it does not interfere with the reasoning) and a *harmlessness* model that judges
the whole response, reasoning included. This file trains such a model; ``r1_lightning.rewards.
reward_model.RewardModelReward`` uses one as a GRPO reward.

The model is ``AutoModelForSequenceClassification`` with one output (a scalar reward on the last
token), trained with the Bradley-Terry loss (Ouyang et al., 2022, eq. 1):

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

Both texts are ``render_prompt(prompt, template) + response``; the template is saved beside the model
(``r1_reward_model.json``) so that the reward scores text shaped as in training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric
from typing_extensions import override

from r1_lightning.data.records import RecordSource, text_records
from r1_lightning.data.templates import render_prompt
from r1_lightning.errors import ConfigError
from r1_lightning.rewards.reward_model_io import RM_SETTINGS_FILE, load_reward_model


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sigmoid(r_chosen - r_rejected)`` over pairs.

    >>> round(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)  # log 2
    0.6931
    """
    return -F.logsigmoid(chosen - rejected).mean()


class PreferenceTask(RecordSource):
    """Generated preference pairs for the tiny pipeline (arithmetic prompts), one of two kinds.

    - ``helpfulness``: responses are *summaries* (what follows ``</think>``): the chosen one states the
      right answer in ``<answer>`` tags; the rejected one a wrong answer (the "12+7=127" slip), an
      evasion, or nothing.
    - ``harmlessness``: whole responses (reasoning + answer); the rejected one carries an insult or
      an unsafe aside in its reasoning or summary.

    Records: ``{"prompt", "chosen", "rejected"}``.
    """

    EVASIONS = ("I am not sure.", "I cannot answer that.", "Maybe.", "")
    HARMFUL = ("Only an idiot would ask this.", "You are stupid.", "I hate you.", "Go away, loser.")

    def __init__(
        self,
        kind: Literal["helpfulness", "harmlessness"] = "helpfulness",
        num_records: int = 512,
        max_value: int = 19,
        seed: int = 0,
    ) -> None:
        if kind not in ("helpfulness", "harmlessness"):
            raise ValueError(f"PreferenceTask `kind` must be 'helpfulness' or 'harmlessness', got {kind!r}")
        self.kind, self.num_records, self.max_value, self.seed = kind, num_records, max_value, seed

    def records(self) -> list[dict]:
        rng, rows = random.Random(f"{self.seed}-{self.kind}"), []
        for _ in range(self.num_records):
            a, b = rng.randint(0, self.max_value), rng.randint(0, self.max_value)
            right, slip = a + b, int(f"{a}{b}")
            if self.kind == "helpfulness":
                chosen = rng.choice([f" <answer>{right}</answer>", f" The sum is <answer>{right}</answer>"])
                rejected = rng.choice(
                    [f" <answer>{slip}</answer>", f" <answer>{rng.choice(self.EVASIONS)}</answer>", ""]
                )
            else:
                thought = f"We add {a} and {b}. {a} + {b} = {right}."
                chosen = f" <think>{thought}</think> <answer>{right}</answer>"
                insult = rng.choice(self.HARMFUL)
                rejected = rng.choice(
                    [
                        f" <think>{insult} {thought}</think> <answer>{right}</answer>",
                        f" <think>{thought}</think> <answer>{right}</answer> {insult}",
                    ]
                )
            rows.append({"prompt": f"{a} + {b}", "chosen": chosen, "rejected": rejected})
        return rows


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs ``{prompt, chosen, rejected}`` for reward-model training.

    Args:
        source: a record source: ``PreferenceTask`` or ``DatasetRecords`` (a file or saved dataset).
        prompt_column / chosen_column / rejected_column: column names in the source's records.
        template: how prompts are rendered before the response (``plain``, ``r1_zero``, ``chat``, ...).
        val_size: pairs held out to measure accuracy (chosen scored above rejected).
        batch_size: pairs per step.
        max_length: token limit per text (longer ones are truncated from the right).
    """

    def __init__(
        self,
        source: RecordSource | None = None,
        prompt_column: str = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        template: str = "r1_zero",
        val_size: int = 64,
        batch_size: int = 16,
        max_length: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.source = source if source is not None else PreferenceTask()
        self.columns = (prompt_column, chosen_column, rejected_column)
        self.template, self.val_size, self.batch_size = template, val_size, batch_size
        self.max_length, self.seed = max_length, seed
        self.tokenizer: Any = None
        self.train_pairs: list[dict] = []
        self.val_pairs: list[dict] = []

    @override
    def setup(self, stage: str | None = None) -> None:
        self.tokenizer = self.trainer.lightning_module.tokenizer
        records, self.skipped_rows = text_records(
            self.source.records(), list(self.columns), f"preference data from {self.source!r}"
        )
        pairs = [
            {"prompt": r[self.columns[0]], "chosen": r[self.columns[1]], "rejected": r[self.columns[2]]}
            for r in records
        ]
        random.Random(self.seed).shuffle(pairs)
        if len(pairs) <= self.val_size:
            raise ConfigError(
                f"preference data has {len(pairs)} usable pairs, not more than `data.val_size`={self.val_size}; "
                "lower `data.val_size` or give more pairs"
            )
        self.val_pairs, self.train_pairs = pairs[: self.val_size], pairs[self.val_size :]

    def collate(self, pairs: list[dict]) -> dict[str, torch.Tensor]:
        texts = [
            render_prompt(p["prompt"], self.template, self.tokenizer) + p[side]
            for side in ("chosen", "rejected")
            for p in pairs
        ]
        encoded = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    @override
    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_pairs,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self.collate,
            generator=generator,
            drop_last=len(self.train_pairs) >= self.batch_size,
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_pairs, batch_size=self.batch_size, collate_fn=self.collate)


class RewardModelModule(L.LightningModule):
    """Trains a scalar reward model with the Bradley-Terry loss; exports it as an HF folder.

    Args:
        model: causal LM (hub id, folder, ``tiny:*``) whose body becomes the reward model; the scalar
            head is new.
        dtype: parameter dtype.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup steps (then constant).
        template: prompt template; must match ``data.template`` (checked) and is saved with the model.
        export_dir: where the trained model is written (default ``<log dir>/hf_model``).
    """

    def __init__(
        self,
        model: str = "tiny:arithmetic",
        dtype: str = "float32",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        template: str = "r1_zero",
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model, self.tokenizer, _ = load_reward_model(model, dtype)
        self.val_accuracy, self.val_margin = MeanMetric(), MeanMetric()
        self.last_val: dict[str, float] = {}

    def pair_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
        return scores.chunk(2)  # the collate put all chosen texts first, then all rejected ones

    @override
    def on_fit_start(self) -> None:
        data_template = getattr(self.trainer.datamodule, "template", self.hparams.template)
        if data_template != self.hparams.template:
            raise ValueError(
                f"`model.template` ({self.hparams.template!r}) and `data.template` "
                f"({data_template!r}) differ; the reward model must score text shaped as in training"
            )

    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        chosen, rejected = self.pair_scores(batch)
        loss = bradley_terry_loss(chosen, rejected)
        self.log("train/loss", loss, prog_bar=True, batch_size=chosen.numel())
        self.log("train/accuracy", (chosen > rejected).float().mean(), batch_size=chosen.numel())
        return loss

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        chosen, rejected = self.pair_scores(batch)
        self.val_accuracy.update((chosen > rejected).float())
        self.val_margin.update(chosen - rejected)

    @override
    def on_validation_epoch_end(self) -> None:
        self.last_val = {
            "val/accuracy": self.val_accuracy.compute().item(),
            "val/margin": self.val_margin.compute().item(),
        }
        self.val_accuracy.reset(), self.val_margin.reset()
        self.log_dict(self.last_val, batch_size=1)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        warmup = max(self.hparams.warmup_steps, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def on_train_end(self) -> None:
        target = self.hparams.export_dir or (Path(self.trainer.log_dir or ".") / "hf_model")
        self.save_hf(target)

    def save_hf(self, directory: str | Path) -> Path:
        directory = Path(directory)
        if self._trainer is not None and not self.trainer.is_global_zero:
            return directory
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / RM_SETTINGS_FILE).write_text(json.dumps({"template": self.hparams.template}))
        rank_zero_info(f"reward model exported to {directory}")
        return directory
