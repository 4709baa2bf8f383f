"""The benchmark helpers' own arithmetic: the GEMM floor multiplies the shapes the model really has."""

import torch

from benchmarks.gemm_floor import gemm_floor, linear_shapes


def test_linear_shapes_are_the_models_linear_layers_in_forward_order(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linear_shapes(model.config) == [(m.out_features, m.in_features) for m in layers]


def test_gemm_floor_times_every_phase(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    parts = gemm_floor(model.config, prompts=2, group_size=2, prompt_length=5, completion_length=3, repeats=1)
    assert set(parts) == {"prefill", "decode", "reference", "train", "total"}
    assert all(seconds > 0 for seconds in parts.values())
    assert abs(parts["total"] - sum(v for k, v in parts.items() if k != "total")) < 1e-12


def test_every_mutation_still_finds_the_code_it_breaks():
    """``benchmarks/mutation_check.py`` edits each file by exact text: a refactor that moves the text would turn
    the mutation into a silent no-op, so each text must occur exactly once where it points."""
    from pathlib import Path

    from benchmarks.mutation_check import MUTATIONS, ROOT

    for name, (path, text, replacement) in MUTATIONS.items():
        assert (Path(ROOT) / path).read_text().count(text) == 1, name
        assert replacement != text, name
