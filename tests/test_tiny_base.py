"""Building the tiny offline base: independent of the caller's grad mode, one build at a time, progress
that shows, and no half-built folders left behind."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from r1_lightning.tiny.base import BaseRecipe, remove_stale_builds, tiny_base_path

SMALL = BaseRecipe(steps=6, batch_size=4, hidden_size=32, layers=1)


def test_the_base_builds_inside_no_grad(tmp_path, monkeypatch, capsys):
    # The pipeline's first stage evaluates the base under torch.no_grad() and builds it there.
    monkeypatch.setenv("R1_LIGHTNING_CACHE", str(tmp_path))
    with torch.no_grad():
        path = tiny_base_path(SMALL)
    assert (path / "config.json").exists() and (path / "recipe.json").exists()
    err = capsys.readouterr().err
    assert "building the tiny offline base model" in err
    assert "pretraining: 6/6 (100%)" in err and "ETA" in err  # plain progress lines when not a terminal
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".build-")] == []


@pytest.mark.slow
def test_concurrent_runs_build_the_base_once(tmp_path):
    script = (
        "from r1_lightning.tiny.base import BaseRecipe, tiny_base_path;"
        "print(tiny_base_path(BaseRecipe(steps=60, batch_size=4, hidden_size=32, layers=1)))"
    )
    env = {**os.environ, "R1_LIGHTNING_CACHE": str(tmp_path)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]  # the same folder
    errs = [err for _, err in outputs]
    assert sum("pretraining: 60/60" in err for err in errs) == 1  # built once
    # the other one either waited on the lock or came after: it reused the folder either way
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".build-")] == []


def test_killed_builds_are_cleaned_up(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".build-tiny-arithmetic-abc-{dead.pid}").mkdir()  # its builder is gone
    (tmp_path / f".build-tiny-arithmetic-def-{os.getpid()}").mkdir()  # a live build: kept
    legacy_old, legacy_new = tmp_path / "tmpold", tmp_path / "tmpnew"
    legacy_old.mkdir(), legacy_new.mkdir()
    os.utime(legacy_old, (time.time() - 3 * 86400,) * 2)
    removed = remove_stale_builds(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".build-tiny-arithmetic-abc-{dead.pid}", "tmpold"])
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == sorted(
        [f".build-tiny-arithmetic-def-{os.getpid()}", "tmpnew"]
    )


def test_a_seed_suffix_picks_another_tiny_base(monkeypatch):
    """``tiny:<name>?seed=N`` builds the base with pretraining seed N; no suffix (or seed 0) is the shipped base,
    so existing caches keep their keys."""
    import r1_lightning.tiny.reasoning as reasoning
    import r1_lightning.tiny.tool_base as tool_base
    from r1_lightning.models import loading
    from r1_lightning.tiny import base

    seen = []
    builders = ((base, "tiny_base_path"), (base, "tiny_small_base_path"), (reasoning, "tiny_reasoning_path"))
    for module, attr in (*builders, (tool_base, "tiny_tools_path")):
        monkeypatch.setattr(module, attr, lambda recipe, _n=attr: seen.append((_n, recipe)) or Path("/x"))

    loading.resolve_model_path("tiny:reasoning?seed=3")
    loading.resolve_model_path("tiny:reasoning")
    loading.resolve_model_path("tiny:tools?seed=2")
    loading.resolve_model_path("tiny:arithmetic?seed=0")
    loading.resolve_model_path("tiny:arithmetic-small?seed=4")
    assert [(name, getattr(r, "seed", r)) for name, r in seen] == [
        ("tiny_reasoning_path", 3),
        ("tiny_reasoning_path", 0),
        ("tiny_tools_path", 2),
        ("tiny_base_path", 0),
        ("tiny_small_base_path", 4),
    ]
    assert seen[0][1] == reasoning.ReasoningBaseRecipe(seed=3) and seen[3][1] == BaseRecipe()
    assert seen[4][1] == BaseRecipe(**{**vars(base.SMALL_RECIPE), "seed": 4})  # the small recipe, reseeded
    for bad in ("tiny:reasoning?seed=x", "tiny:reasoning?steps=3", "tiny:random?seed=1"):
        with pytest.raises(ValueError, match="seed"):
            loading.resolve_model_path(bad)
    assert loading.resolve_model_path("./my/model") == "./my/model"
