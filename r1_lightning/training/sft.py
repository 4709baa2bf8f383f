"""SFTModule: supervised fine-tuning with a completion-only loss (R1's cold start, rejection-sampling SFT
and distillation).

The loss is the mean negative log-likelihood of the response tokens in a batch (prompt and padding
tokens are masked with -100 by ``SFTDataModule``):

    L = - (1 / |R|) * sum_{t in R} log pi_theta(y_t | x, y_<t)

With packed rows (``segment_ids``) the model gets a block-diagonal causal mask, so no example attends
to another and each example's log-likelihood is that of its unpacked forward (tested).
The output head runs only on response tokens, ``logprob_chunk_size`` of them at a time (recomputed in
backward; :mod:`r1_lightning.models.chunked_logprobs`), so no ``[rows, tokens, vocab]`` logits are built:
with a 151,936-token vocabulary they, not the weights, decide the memory of long traces.
With ``trainer.accumulate_grad_batches`` Lightning averages per-batch means (the usual SFT convention);
GRPO, where the normaliser matters more, keeps its own token totals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from r1_lightning.models.chunked_logprobs import head_scores, hidden_states_as_logits, resolve_chunk_size
from r1_lightning.models.loading import (
    LoraSettings,
    apply_lora,
    as_lora,
    load_policy,
    optimizer_and_scheduler,
    save_policy,
)


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``[B, 1, T, T]`` boolean mask: causal, within one segment; padding (-1) attends only to itself.

    >>> packed_attention_mask(torch.tensor([[0, 0, 1]]))[0, 0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    width = segment_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment_ids.device).tril()
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] >= 0)
    eye = torch.eye(width, dtype=torch.bool, device=segment_ids.device)  # no all-masked rows (NaN)
    return ((same & causal) | eye)[:, None]


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean NLL over response tokens, number of response tokens)``; labels are -100 elsewhere.

    >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
    >>> round(response_nll(logits, torch.tensor([[-100, 2, 1]]))[0].item(), 4)  # only token 1 -> 2 counts
    1.3863
    """
    targets = labels[:, 1:]
    count = (targets != -100).sum()
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return loss / count.clamp(min=1), count


def chunked_response_nll(
    head: Any, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_nll` from final hidden states: the output ``head`` is applied to the response
    positions only, ``chunk_size`` at a time (same value and gradient)."""
    targets = labels[:, 1:]
    scored = targets != -100
    count = scored.sum()
    logprobs, _ = head_scores(head, hidden[:, :-1][scored], targets[scored], 1.0, chunk_size, False)
    return -logprobs.sum() / count.clamp(min=1), count


class SFTModule(L.LightningModule):
    """Supervised fine-tuning of a causal LM on prompt/response records.

    Args:
        model: hub id, local HF folder (e.g. a previous stage's export), or ``tiny:*``.
        dtype: parameter dtype.
        attn_implementation: transformers attention backend (packing needs ``sdpa`` or ``eager``).
        gradient_checkpointing: recompute activations in backward.
        lora: train LoRA adapters instead of all weights (merged on export).
        optimizer: ``adamw`` or a bitsandbytes 8-bit/paged variant.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        lr_scheduler: transformers scheduler name (``cosine`` / ``linear`` need ``trainer.max_steps``).
        export_dir: where the final model is written as an HF folder (default ``<log dir>/hf_model``).
        logprob_chunk_size: response tokens per chunk through the output head (null: ~128 MiB of float32
            logits per chunk, from the vocabulary size; 0 = full logits).
    """

    def __init__(
        self,
        model: str = "tiny:arithmetic",
        dtype: str = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        lora: LoraSettings | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_scheduler: str = "constant_with_warmup",
        export_dir: str | None = None,
        logprob_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.policy, self.tokenizer = load_policy(model, dtype, attn_implementation, gradient_checkpointing)
        self.logprob_chunk = resolve_chunk_size(logprob_chunk_size, self.policy)
        self.lora = as_lora(lora)
        if self.lora is not None:
            self.policy = apply_lora(self.policy, self.lora, False, gradient_checkpointing)

    @override
    def on_train_start(self) -> None:
        self.policy.train()  # from_pretrained returns eval mode; Lightning keeps the mode it finds

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        segments = batch["segment_ids"]
        if bool((segments.max(dim=1).values > 0).any()):  # packed rows: keep examples apart
            mask, positions = packed_attention_mask(segments), batch["position_ids"]
        else:
            mask, positions = (segments >= 0).long(), None
        chunk_size = getattr(self, "logprob_chunk", 0)
        if not chunk_size:
            logits = self.policy(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions).logits
            return response_nll(logits, batch["labels"])
        with hidden_states_as_logits(self.policy) as head:
            hidden = self.policy(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions).logits
        return chunked_response_nll(head, hidden, batch["labels"], chunk_size)

    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, count = self.forward_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(count))
        self.log("train/response_tokens", count.float(), reduce_fx="sum", batch_size=1)
        return loss

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, count = self.forward_loss(batch)
        self.log("val/loss", loss, batch_size=int(count), prog_bar=True)

    @override
    def configure_optimizers(self) -> Any:
        return optimizer_and_scheduler(self, [p for p in self.policy.parameters() if p.requires_grad])

    @override
    def on_train_end(self) -> None:
        self.save_hf(self.hparams.export_dir or (Path(self.trainer.log_dir or ".") / "hf_model"))

    def save_hf(self, directory: str | Path) -> Path:
        """Write the model (LoRA merged) and tokenizer as a ``save_pretrained`` folder (rank 0 writes)."""
        directory = Path(directory)
        if self._trainer is not None and not self.trainer.is_global_zero:
            return directory
        save_policy(self.policy, self.tokenizer, directory, lora=self.lora is not None)
        rank_zero_info(f"SFT model exported in Hugging Face format to {directory}")
        return directory
