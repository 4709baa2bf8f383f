"""GPU-only paths; skipped cleanly without CUDA."""

import pytest
import torch

from r1_lightning.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_mixed_fast_dev_run_on_gpu(tmp_path):
    from test_cli import _fast

    cli = main(["fit", *_fast(tmp_path, "--trainer.fast_dev_run", "1", "--trainer.accelerator", "gpu",
                              "--trainer.precision", "bf16-mixed")])
    assert cli.trainer.global_step == 1
    assert next(cli.model.policy.parameters()).is_cuda


def test_bf16_weights_generate_and_score(tmp_path):
    from r1_lightning.models import load_policy
    from r1_lightning.rollout import HFGenerator, SamplingConfig

    model, tokenizer = load_policy("tiny:random", dtype="bfloat16")
    model.cuda()
    gen = HFGenerator(tokenizer).generate(model, ["1 + 1"] * 4, SamplingConfig(max_new_tokens=8))
    assert gen.input_ids.is_cuda and len(gen.texts) == 4
