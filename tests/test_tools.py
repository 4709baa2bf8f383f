"""Tool calls inside the decode loop: rows in different turns decode together, the ids trained are exactly the
ids sampled and inserted, inserted responses are masked out of the loss, and bad calls never end a rollout.

The policy is scripted: ``sample_categorical`` returns each row's next scripted token (a real model decodes,
with the lean and the hf step), so the test knows which tokens were sampled."""

import pytest
import torch

import r1_lightning.generation.sampler as sampler_module
from r1_lightning.generation.rollout import SamplingConfig
from r1_lightning.generation.sampler import TorchGenerator
from r1_lightning.generation.tool_session import ToolSession
from r1_lightning.generation.tools import ToolBox, parse_call, tool_stats


def _call(name: str, **arguments) -> str:
    import json

    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def _scripted(monkeypatch, tokenizer, scripts: list[str]) -> list[list[int]]:
    """Make row i sample the tokens of ``scripts[i]`` then EOS; returns the scripted ids per row."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in scripts]
    position = [0] * len(ids)

    def sample(scores):
        out = []
        for row in range(scores.shape[0]):
            script = ids[row]
            out.append(script[min(position[row], len(script) - 1)])
            position[row] += 1
        return torch.tensor(out)

    original = ToolSession.override

    def override(self, token, finished):
        token, inserted = original(self, token, finished)
        for row in inserted.nonzero().flatten().tolist():
            position[row] -= 1  # the sampled token was replaced by the tool's: sample it again next step
        return token, inserted

    monkeypatch.setattr(sampler_module, "sample_categorical", sample)
    monkeypatch.setattr(ToolSession, "override", override)
    return ids


TOOLS = ["helpers.tools.add", "helpers.tools.crash", "helpers.tools.hang", "helpers.tools.shout"]


@pytest.mark.parametrize("engine", ["lean", "hf"])
def test_rows_in_different_turns_decode_together_token_in_token_out(monkeypatch, tiny_model_and_tokenizer, engine):
    model, tokenizer = tiny_model_and_tokenizer
    scripts = [
        "<think>" + _call("add", a=17, b=25) + "</think><answer>42</answer>",  # calls at once
        "<think>first I think a while" + _call("add", a=1, b=2) + _call("add", a=3, b=3) + "</think><answer>9</answer>",
        "<think>no tool needed</think><answer>5</answer>",  # never calls
    ]
    sampled = _scripted(monkeypatch, tokenizer, scripts)
    toolbox = ToolBox(TOOLS, max_iterations=4, timeout=2.0)
    generator = TorchGenerator(tokenizer, engine=engine)
    gen = generator.generate(model, ["A: ", "B: ", "C: "], SamplingConfig(max_new_tokens=320), tools=toolbox)

    completion = gen.input_ids[:, gen.prompt_length :]
    for row, script_ids in enumerate(sampled):
        real = gen.completion_mask[row].bool()
        inserted = gen.tool_mask[row].bool()
        # token in, token out: the sampled positions hold exactly the scripted ids, in order ...
        assert completion[row][real & ~inserted].tolist() == script_ids
        # ... and the inserted positions exactly the ids of the tool responses, never re-tokenised text
        responses = "".join(toolbox.response(_as_call(c)) for c in gen.tool_calls[row])
        assert completion[row][inserted].tolist() == tokenizer(responses, add_special_tokens=False)["input_ids"]
        assert torch.equal(gen.trained_mask()[row], (real & ~inserted).long())  # what the loss counts
        assert not bool(gen.truncated[row])
    assert [len(calls) for calls in gen.tool_calls] == [1, 2, 0]
    assert [c["result"] for c in gen.tool_calls[1]] == ["3", "6"]
    assert "<tool_response>42</tool_response></think><answer>42</answer>" in gen.texts[0]
    # the sampler's log-probs of inserted tokens are 0 (they were not sampled)
    assert float(gen.sample_logprobs[gen.tool_mask.bool()].abs().sum()) == 0.0


def _as_call(record):
    from r1_lightning.generation.tools import ToolCall

    return ToolCall(record["name"], record["arguments"], record["status"], record["result"])


def test_bad_calls_are_answered_with_an_error_counted_and_decoding_goes_on(monkeypatch, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    answer = "</think><answer>1</answer>"
    scripts = [
        "<think><tool_call>add(1, 2)</tool_call>" + answer,  # malformed
        "<think>" + _call("divide", a=1) + answer,  # unknown tool
        "<think>" + _call("crash", a=1) + answer,  # raises
        "<think>" + _call("hang", a=1) + answer,  # hangs: killed at the deadline
        "<think>" + _call("shout", a=1) + answer,  # prints and returns megabytes
        "<think>" + _call("add", a=1, b=1) + _call("add", a=2, b=2) + answer,  # past the limit of 1
    ]
    _scripted(monkeypatch, tokenizer, scripts)
    toolbox = ToolBox(TOOLS, max_iterations=1, timeout=1.0, max_output_chars=64)
    gen = TorchGenerator(tokenizer).generate(
        model, [f"{i}: " for i in range(6)], SamplingConfig(max_new_tokens=400), tools=toolbox
    )
    statuses = [[c["status"] for c in calls] for calls in gen.tool_calls]
    assert statuses == [["malformed"], ["unknown"], ["error"], ["timeout"], ["ok"], ["ok", "limit"]]
    assert "ZeroDivisionError" in gen.tool_calls[2][0]["result"]
    assert len(gen.tool_calls[4][0]["result"]) < 120 and "characters cut" in gen.tool_calls[4][0]["result"]
    assert all(text.endswith("<answer>1</answer>") for text in gen.texts)  # every row went on to its answer
    stats = tool_stats(gen.tool_calls)
    assert stats["tools/errors"] == 4 and stats["tools/timeouts"] == 1
    assert stats["tools/calls_per_completion"] == pytest.approx(7 / 6) and stats["tools/turns"] == pytest.approx(13 / 6)


def test_parse_call_reads_the_hermes_format_and_names_what_is_wrong():
    assert parse_call('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>').arguments == {"a": 1}
    assert parse_call("<tool_call>{}</tool_call>").status == "malformed"
    assert parse_call('<tool_call>{"name": "f", "arguments": [1]}</tool_call>').status == "malformed"
    assert parse_call("no call").status == "malformed"


def test_a_tool_without_type_hints_is_a_clear_error():
    def untyped(a):
        """No hints."""
        return a

    with pytest.raises(ValueError, match="type hints on every argument"):
        ToolBox([untyped])
    with pytest.raises(ValueError, match="cannot be imported"):
        ToolBox(["helpers.tools.nope"])
    schema = ToolBox(["helpers.tools.add"]).schemas[0]
    assert schema["function"]["name"] == "add" and set(schema["function"]["parameters"]["properties"]) == {"a", "b"}


def test_grpo_trains_with_a_stateful_tool_and_rewards_see_environments_and_calls(monkeypatch, tmp_path):
    """The shipped default with ``tools`` and ``environment_factory`` by command-line overrides: every
    completion calls ``bump`` once (scripted), its environment's total reaches the reward function as TRL
    passes it (``environments``), the calls reach rewards as ``tool_calls``, and train/tools/* is logged."""
    import csv

    from helpers import fast_args

    from r1_lightning.cli.main import main
    from r1_lightning.models.loading import load_policy

    _, tokenizer = load_policy("tiny:random")
    script = "<think>" + _call("bump", by=2) + "</think><answer>2</answer>"
    ids = tokenizer(script, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    state = {"position": []}
    original_init, original_override = ToolSession.__init__, ToolSession.override

    def init(self, toolbox, tok, rows, device, environments):
        original_init(self, toolbox, tok, rows, device, environments)
        state["position"] = [0] * rows  # a new rollout: every row starts its script again

    def sample(scores):
        position = state["position"] or [0] * scores.shape[0]
        out = [ids[min(p, len(ids) - 1)] for p in position]
        state["position"] = [p + 1 for p in position]
        return torch.tensor(out)

    def override(self, token, finished):
        token, inserted = original_override(self, token, finished)
        for row in inserted.nonzero().flatten().tolist():
            state["position"][row] -= 1
        return token, inserted

    monkeypatch.setattr(ToolSession, "__init__", init)
    monkeypatch.setattr(ToolSession, "override", override)
    monkeypatch.setattr(sampler_module, "sample_categorical", sample)
    main(["fit", *fast_args(tmp_path, "--model.init_args.environment_factory", "helpers.tools.Tally",
                            "--model.init_args.tools", "[helpers.tools.add]",
                            "--model.init_args.rewards",
                            "{helpers.tools.tally_reward: 1.0, helpers.tools.used_a_tool_reward: 1.0}",
                            "--model.init_args.sampling.max_new_tokens", "120", "--trainer.log_every_n_steps", "1",
                            "--data.init_args.batch_size", "2", "--model.init_args.num_generations", "2",
                            steps=2)])  # fmt: skip
    rows = [r for path in tmp_path.glob("**/metrics.csv") for r in csv.DictReader(path.open()) if r.get("train/loss")]
    assert len(rows) == 2
    for row in rows:
        assert float(row["train/reward/tally_reward"]) == 2.0  # the environment's state reached the reward
        assert float(row["train/reward/used_a_tool_reward"]) == 1.0  # and the call's outcome did
        assert float(row["train/tools/calls_per_completion"]) == 1.0 and float(row["train/tools/turns"]) == 2.0
        assert float(row["train/tools/errors"]) == 0.0
        # lengths count sampled tokens only: the script up to the stop string </answer>, not the inserted response
        assert float(row["train/completion_length"]) == len(ids) - 1


def test_the_tool_base_corpus_calls_as_the_loop_parses_and_leaves_responses_unscored():
    """tiny:tools' pretraining text: a call the decode loop parses, the tool's response tokenized on its own
    (as the loop inserts it) and carrying no loss, and the rare share of tool-worked texts the recipe sets."""
    import random

    from r1_lightning.tiny.base import _completion_ids
    from r1_lightning.tiny.tool_base import ToolBaseRecipe, build_tool_tokenizer, completion

    tokenizer = build_tool_tokenizer()
    before, response, after = completion(47, 85, ToolBaseRecipe(direct=0.0, tool=1.0), random.Random(0))
    assert parse_call(before).arguments == {"a": 47, "b": 85} and response == "<tool_response>132</tool_response>"
    assert before.startswith(" <think>47+85=<tool_call>") and after == "</think> <answer>132</answer>"
    ids, skipped = _completion_ids(tokenizer, [(before, True), (response, False), (after, True)], offset=10)
    assert [ids[i - 10] for i in skipped] == tokenizer(response, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == before + response + after
    assert _completion_ids(tokenizer, " <think>1+1=2</think>", 5)[1] == []
    rng, recipe = random.Random(0), ToolBaseRecipe()
    share = sum(completion(12, 34, recipe, rng)[1] != "" for _ in range(20_000)) / 20_000
    assert share == pytest.approx(recipe.tool, abs=0.005)


def test_the_tool_base_products_can_only_be_answered_by_copying_the_calculators_response():
    """The multiplication texts (``products``): a ``multiply`` call the loop parses and runs, the response
    unscored, and an answer that is the response copied (what teaches a base to copy what the tool says)."""
    from r1_lightning.generation.tools import ToolBox
    from r1_lightning.tiny.tool_base import build_tool_tokenizer, product_text

    prompt, before, response, after = product_text(347, 29)
    call = parse_call(before)
    assert prompt == "347 * 29" and (call.name, call.arguments) == ("multiply", {"a": 347, "b": 29})
    toolbox = ToolBox(["r1_lightning.tools.calculator.multiply"])
    toolbox.run([call], None)
    assert toolbox.response(call) == response == "<tool_response>10063</tool_response>"
    assert after == "</think> <answer>10063</answer>"
    pieces = [build_tool_tokenizer().decode([i]) for i in build_tool_tokenizer()(before)["input_ids"]]
    assert '{"name": "multiply", "arguments": {"a": ' in pieces  # one token, as the add call's opening is


def test_the_tool_base_corpus_mixes_products_and_rare_addition_calls_at_the_recipes_shares():
    import random

    from r1_lightning.data.tasks import CarryAdditionTask
    from r1_lightning.tiny.tool_base import ToolBaseRecipe, pretraining_example

    recipe, rng, n = ToolBaseRecipe(), random.Random(0), 20_000
    texts = [pretraining_example(recipe, CarryAdditionTask(1, 3), rng) for _ in range(n)]
    products = [t for t in texts if " * " in t[0]]
    additions = [t for t in texts if " + " in t[0]]
    assert len(products) + len(additions) == n and len(products) / n == pytest.approx(recipe.products, abs=0.01)
    assert all('"multiply"' in segments[0][0] and not segments[1][1] for _, segments in products)
    called = sum(segments[1][0] != "" for _, segments in additions) / len(additions)
    assert called == pytest.approx(recipe.tool, abs=0.01) and recipe.tool <= 0.05  # the "rarely"


def test_the_tool_base_tokenizer_splits_numbers_into_groups_of_three_digits_and_round_trips():
    from r1_lightning.tiny.tool_base import build_tool_tokenizer, tool_call_text

    tokenizer = build_tool_tokenizer(number_tokens=1000)
    response = "<tool_response>1649</tool_response>"
    text = f" <think>682+967={tool_call_text(682, 967)}{response}</think> <answer>1649</answer>"
    ids = tokenizer(text)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[2:5] == ["682", "+", "967"] and pieces[-4:] == ["<answer>", "164", "9", "</answer>"]
    for sample in (text, " The answer is 1009.", "5 + 7 = 12 and 100000 08"):
        assert tokenizer.decode(tokenizer(sample)["input_ids"]) == sample
    assert [tokenizer.decode([i]) for i in build_tool_tokenizer()("682")["input_ids"]] == ["6", "8", "2"]


# Qwen2.5's chat template, reduced to its turns: tool results go in a user turn as <tool_response> blocks.
QWEN_LIKE_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_under_a_chat_template_the_response_is_its_tool_turn_token_in_token_out(monkeypatch, tiny_model_and_tokenizer):
    """As TRL wraps a tool result: the text between the assistant's call and the next generation prompt in a
    dummy conversation. The inserted ids are that turn's, and the row goes on decoding after it (the turn
    holds ``<|im_end|>``, which never ends the answer while it is being inserted)."""
    import copy

    from r1_lightning.generation.tools import chat_tool_wrapper

    model, tokenizer = tiny_model_and_tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = QWEN_LIKE_TEMPLATE
    before, after = chat_tool_wrapper(tokenizer)
    assert before == "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
    assert after == "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"

    scripts = ["<think>" + _call("add", a=17, b=25) + "</think><answer>42</answer>"]
    sampled = _scripted(monkeypatch, tokenizer, scripts)
    toolbox = ToolBox(TOOLS, timeout=2.0)
    assert toolbox.use_chat_template(tokenizer)
    gen = TorchGenerator(tokenizer).generate(model, ["A: "], SamplingConfig(max_new_tokens=200), tools=toolbox)
    completion, inserted = gen.input_ids[0, gen.prompt_length :], gen.tool_mask[0].bool()
    turn = tokenizer(before + "42" + after, add_special_tokens=False)["input_ids"]
    assert completion[inserted].tolist() == turn
    assert completion[gen.completion_mask[0].bool() & ~inserted].tolist() == sampled[0]
    assert gen.texts[0].endswith("<answer>42</answer>")

    # Rewards get it as TRL gives a chat prompt's tool-calling completion: assistant, tool, assistant messages
    from r1_lightning.rewards.contract import RewardState, generation_reward_inputs
    from r1_lightning.text import completion_text

    chat_prompt = [{"role": "user", "content": "17 + 25"}]
    columns = {"raw_prompt": [chat_prompt], "answer": ["42"]}
    completions, kwargs = generation_reward_inputs(gen, columns, RewardState(0, 1, 0.0), ["A: "], tokenizer)
    (conversation,) = completions
    assert [m["role"] for m in conversation] == ["assistant", "tool", "assistant"]
    assert conversation[0]["content"] == "<think>"  # the call's markup moved into tool_calls
    assert conversation[0]["tool_calls"] == [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 17, "b": 25}}}
    ]
    assert conversation[1] == {"role": "tool", "name": "add", "content": "42"}
    assert conversation[2]["content"] == "</think><answer>42</answer>"
    assert completion_text(conversation) == "<think></think><answer>42</answer>"  # format rewards read it whole
    assert kwargs["tool_calls"] == gen.tool_calls
    text_completions, _ = generation_reward_inputs(
        gen, {"raw_prompt": ["17 + 25"]}, RewardState(0, 1, 0.0), None, tokenizer
    )
    assert text_completions == gen.texts  # text prompts: the transcript text, as before

    # Templates without a tool turn keep the tag format: none at all, one that raises on it, one that drops it.
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    raising = copy.deepcopy(tokenizer)
    loop = "{% for m in messages %}{% if m['role'] "
    raising.chat_template = loop + "== 'tool' %}{{ raise_exception('no') }}{% endif %}{% endfor %}"
    dropping = copy.deepcopy(tokenizer)
    dropping.chat_template = loop + "!= 'tool' %}{{ m['content'] }}{% endif %}{% endfor %}"
    for other in (plain, raising, dropping):
        assert chat_tool_wrapper(other) is None
    tags = ToolBox(TOOLS)
    assert not tags.use_chat_template(raising)
    assert tags.response(_as_call({"name": "add", "arguments": {}, "status": "ok", "result": "3"})) == (
        "<tool_response>3</tool_response>"
    )


def test_the_datamodule_wraps_tool_turns_only_for_chat_rendered_prompts(tiny_model_and_tokenizer):
    import copy
    from types import SimpleNamespace

    from r1_lightning.data import ArithmeticTask, PromptDataModule

    _, tokenizer = tiny_model_and_tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = QWEN_LIKE_TEMPLATE
    for template, wrapped in (("chat", True), ("r1_zero", False)):
        toolbox = ToolBox(TOOLS)
        dm = PromptDataModule(ArithmeticTask(), template=template)
        dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(toolbox=toolbox, tokenizer=tokenizer))
        dm.setup("validate")
        assert (toolbox.turn is not None) is wrapped
