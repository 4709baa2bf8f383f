"""Token-tiled MLPs (``models/tiled_mlp.py``): the same loss and gradients as the untiled model, far fewer bytes
kept for backward, and no change where no gradient is recorded."""

import torch

from r1_lightning.models.tiled_mlp import tile_mlps


def _model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300, hidden_size=32, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def _loss_grads_and_saved_bytes(model, ids):
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return loss.detach(), grads, sum(saved)


def test_tiled_mlps_give_the_same_loss_and_gradients_and_keep_less_for_backward():
    ids = torch.randint(1, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    plain = _model()
    loss, grads, plain_bytes = _loss_grads_and_saved_bytes(plain, ids)
    tiled = _model()
    assert tile_mlps(tiled, tile_tokens=16) == 2  # one MLP per decoder layer
    assert tile_mlps(tiled, tile_tokens=16) == 0  # tiling twice is a no-op
    tiled_loss, tiled_grads, tiled_bytes = _loss_grads_and_saved_bytes(tiled, ids)
    torch.testing.assert_close(tiled_loss, loss, rtol=0, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(tiled_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # the four [tokens, 256] intermediates per layer are not kept: 2 layers x 4 x 120 x 256 x 4 bytes
    assert plain_bytes - tiled_bytes >= 2 * 4 * 120 * 256 * 4 * 0.9


def test_tiling_is_off_without_gradients_and_for_short_inputs():
    ids = torch.randint(1, 300, (2, 10), generator=torch.Generator().manual_seed(2))
    model = _model()
    tile_mlps(model, tile_tokens=4)
    with torch.no_grad():
        expected = _model()(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)
    assert tile_mlps(_model(), tile_tokens=0) == 0
    short = _model()
    tile_mlps(short, tile_tokens=64)  # 20 tokens: one tile, the plain forward
    _, _, short_bytes = _loss_grads_and_saved_bytes(short, ids)
    assert short_bytes == _loss_grads_and_saved_bytes(_model(), ids)[2]


def test_a_deep_copy_of_a_tiled_model_computes_with_its_own_weights():
    import copy

    ids = torch.randint(1, 300, (2, 30), generator=torch.Generator().manual_seed(3))
    model = _model()
    tile_mlps(model, tile_tokens=8)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    expected = _model()
    with torch.no_grad():
        for p in expected.parameters():
            p.mul_(0.5)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(twin(input_ids=ids).logits, expected(input_ids=ids).logits, rtol=1e-5, atol=1e-6)


def test_auto_tiling_resolves_from_the_widths_and_tiles_only_above_its_threshold():
    """``mlp_tile_tokens: null``: 1,024-token tiles in forwards whose MLP intermediates pass 256 MiB per layer
    (hand-computed thresholds for Qwen2.5-0.5B in fp32 and Qwen2.5-7B in bf16); 0 off; N always; < 0 refused."""
    import pytest
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1_lightning.models import tiled_mlp
    from r1_lightning.models.tiled_mlp import resolve_mlp_tiling

    small = _model()  # intermediate 256, fp32: 256 MiB / (4 x 256 x 4 bytes) = 65,536 tokens
    assert resolve_mlp_tiling(None, small) == (1024, 65536)
    assert resolve_mlp_tiling(0, small) == (0, 0) and resolve_mlp_tiling(16, small) == (16, 0)
    with pytest.raises(ValueError, match=r"`model.mlp_tile_tokens` must be >= 0 \(0: off\) or null \(auto\), got -1"):
        resolve_mlp_tiling(-1, small)
    with torch.device("meta"):  # real widths, no memory: only the config and the dtype are read
        qwen_05b = Qwen2ForCausalLM(Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=1))
        qwen_7b = Qwen2ForCausalLM(Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=1))
    assert resolve_mlp_tiling(None, qwen_05b) == (1024, 3449)  # 268,435,456 // (4 x 4,864 x 4)
    assert resolve_mlp_tiling(None, qwen_7b.to(torch.bfloat16)) == (1024, 1771)  # // (4 x 18,944 x 2)
    # the threshold decides: 3 x 40 = 120 tokens, tiles of 16; above 200 nothing is tiled, above 100 it is
    ids = torch.randint(1, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    plain_bytes = _loss_grads_and_saved_bytes(_model(), ids)[2]
    for above, tiled in ((200, False), (100, True)):
        model = _model()
        tile_mlps(model, 16, above)
        saved = _loss_grads_and_saved_bytes(model, ids)[2]
        assert (saved < plain_bytes) == tiled, above
    assert tiled_mlp.AUTO_TILE_TOKENS == 1024 and tiled_mlp.AUTO_MLP_BYTES == 256 * 1024**2


def test_the_module_tiles_by_default_above_the_auto_threshold_and_refuses_a_negative_setting():
    import pytest

    from r1_lightning.training.grpo import GRPOModule

    module = GRPOModule(model="tiny:random", num_generations=2)
    tile, above = module.mlp_tiling
    assert tile == 1024 and above > 10_000  # a tiny model's forwards never reach it
    assert all(layer.mlp._r1_tile_above == above for layer in module.policy.model.layers)
    assert GRPOModule(model="tiny:random", num_generations=2, mlp_tile_tokens=0).mlp_tiling == (0, 0)
    with pytest.raises(ValueError, match="`model.mlp_tile_tokens` must be >= 0"):
        GRPOModule(model="tiny:random", num_generations=2, mlp_tile_tokens=-5)
