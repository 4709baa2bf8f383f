"""Tests run offline: no hub, no W&B network; tiny models are built locally into a temporary cache."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory):
    """A per-session cache, so tests never read or write the user's ~/.cache/r1_lightning."""
    if os.environ.get("R1_LIGHTNING_TEST_CACHE"):
        os.environ["R1_LIGHTNING_CACHE"] = os.environ["R1_LIGHTNING_TEST_CACHE"]
    else:
        os.environ["R1_LIGHTNING_CACHE"] = str(tmp_path_factory.mktemp("r1_cache"))
    yield


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(_tiny_cache):
    from r1_lightning.models import load_policy

    torch.manual_seed(0)
    return load_policy("tiny:random")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
