"""A clean console: silence what the libraries print that a user of this project cannot act on.

Each filter below names a message and why it does not apply here. Everything else (Lightning's own
warnings about a user's config, our warnings) still shows. ``R1_LIGHTNING_VERBOSE=1`` turns the
filtering off, for debugging a library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

# (message regex, why it is noise for this project)
IGNORED_WARNINGS = (
    # Lightning's own pytree helper calls a torch API deprecated in torch 2.13; nothing for a user to change.
    (r".*isinstance\(treespec, LeafSpec\).*", "internal to Lightning"),
    # GRPO's frozen reference (and a LoRA base) is in eval mode on purpose: it is never trained.
    (r"Found \d+ module\(s\) in eval mode at the start of training.*", "the frozen reference is meant to be"),
    # Our modules step the optimizer inside training_step; a step checkpoint holds the weights after the
    # step and the step counter after it, which is exactly what an exact resume needs.
    (r"Using ModelCheckpoint with manual optimization and every_n_train_steps.*", "post-step state is intended"),
    # Checkpoints live in one folder per run (so --ckpt_path last finds them); a resumed run writes there.
    (r"Checkpoint directory .* exists and is not empty.*", "expected when a run resumes"),
    # Validation metrics are summed over ranks by the module before they are logged (each rank scores its
    # share of the held-out set; GRPOEvaluation), so Lightning's advice to sync them again does not apply.
    (r"It is recommended to use `self.log\('val/.*sync_dist=True.*", "already reduced over ranks"),
    # The CLI always hands LightningCLI its arguments (after translating `--model X --help`).
    (r"LightningCLI's args parameter is intended to run from within Python.*", "intended"),
    # DataLoader worker advice for a CPU prompt stream that tokenizes in the main process on purpose.
    (r".*does not have many workers which may be a bottleneck.*", "prompts are cheap; workers are off on purpose"),
    # peft reads `model.is_gradient_checkpointing`, which transformers 5.24 renamed (is_activation_checkpointing);
    # the read still works, and the fix is peft's to make.
    (r"`is_gradient_checkpointing` is deprecated.*", "peft's call, not the user's"),
)

# (logger name, substring) of log records that advertise other products or report optional kernels.
IGNORED_LOG_RECORDS = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
    ("lightning.pytorch.utilities.rank_zero", "litmodels"),
    # bitsandbytes on an AVX-512 BF16 CPU tries to download an optional kernel from a hub at import time;
    # without it, it uses its built-in CPU kernel (the same results).
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    # vLLM's in-place weight reload (the vllm engine's sync before every rollout) warns for each rotary
    # embedding, whose cos/sin table is a buffer no checkpoint carries; it puts the table back itself.
    ("vllm.model_executor.model_loader.reload.layerwise", "RotaryEmbedding: Failed to load weights"),
)


class _DropMatching(logging.Filter):
    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle

    def filter(self, record: logging.LogRecord) -> bool:
        return self.needle not in record.getMessage()


def quiet_console() -> None:
    """Install the filters (idempotent). Called by the CLI before it imports the libraries."""
    if os.environ.get("R1_LIGHTNING_VERBOSE") == "1":
        return
    for pattern, _why in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, needle in IGNORED_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.needle == needle for f in logger.filters):
            logger.addFilter(_DropMatching(needle))
    # transformers' per-file progress bars ("Loading weights", "Writing model shards") for a model
    # that loads in a fraction of a second; load times of big models still show in the run's log.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    # datasets' "Saving the dataset (1/1 shards)" / "Map" bars for the small files a pipeline stage
    # writes (rejection sampling's dataset): carriage-return noise in a log file; our own progress
    # lines say what the stage is doing.
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


class _DropNewHeadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        missing = [line.split("|")[0].strip() for line in message.splitlines() if "| MISSING" in line]
        return not missing or any(not key.startswith("score.") for key in missing)


@contextlib.contextmanager
def expected_new_score_head() -> Iterator[None]:
    """Silence transformers' load report while a reward model starts from a language model: its new
    ``score`` head is missing from the checkpoint by design (any other missing weight still reports)."""
    loggers = [logging.getLogger(name) for name in ("transformers.modeling_utils", "transformers.utils.loading_report")]
    drop = _DropNewHeadReport()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
