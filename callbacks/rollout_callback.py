"""RolloutCallback: turns a batch of prompts into a scored GRPO rollout before each training step."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from typing_extensions import override


def capture_rng_states() -> dict[str, Any]:
    """Every random generator sampling can touch: Python's, NumPy's, torch's CPU and CUDA ones."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    # Plain types and tensors only: checkpoints load with torch.load(weights_only=True).
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]
    states: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RolloutCallback(L.Callback):
    """Before each training step, attaches ``batch["rollout"] = module.make_rollout(batch)`` (sampling,
    rewards, advantages, micro-batch plan and the extra log-probs: ``GRPOModule.make_rollout``), and
    keeps the random generators' state across checkpoints. Groups are never split: each rank samples
    all G completions of its own prompts.

    Checkpoints carry the random generators' states as they were after the saved step; a resumed run
    puts them back just before its first rollout (after Lightning's own start-up, which draws from
    them when it builds the data loader), so the resumed steps sample what the uninterrupted run did.
    """

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng_states()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict.get("rng")

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: dict, batch_idx: int) -> None:
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
        batch["rollout"] = pl_module.make_rollout(batch)
