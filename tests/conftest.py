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
    from r1_lightning.models.loading import load_policy

    torch.manual_seed(0)
    return load_policy("tiny:random")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _work_tree_state() -> set[str] | None:
    """Paths git reports as changed, untracked or ignored (build caches aside); None outside git."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    skip = ("__pycache__", ".egg-info", ".pytest_cache", ".ruff_cache")
    # New files only (untracked "??" or ignored "!!"): what a test writing outside tmp_path leaves; an
    # edit a developer makes to a tracked file while the suite runs is not the suite's doing.
    return {line for line in out.splitlines() if line[:2] in ("??", "!!") and not any(s in line for s in skip)}


@pytest.fixture(scope="session", autouse=True)
def _tests_write_only_under_tmp_path():
    """A test that writes into the repository (a stray config.yaml, runs/, lightning_logs/) fails the
    suite: tests write under tmp_path only."""
    before = _work_tree_state()
    yield
    after = _work_tree_state()
    if before is not None and after is not None and after - before:
        pytest.fail(f"the test suite wrote into the work tree: {sorted(after - before)}", pytrace=False)
