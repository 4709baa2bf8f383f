"""A callback for tests/test_resume.py: record which prompts each step trained on."""

import json
from pathlib import Path

import lightning as L


class PromptRecorder(L.Callback):
    """Appends ``{"step": n, "prompts": [...]}`` per training step to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": trainer.global_step, "prompts": batch["raw_prompt"]}) + "\n")
