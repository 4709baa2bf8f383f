"""open-r1's and TRL's reward tests, ported: the same cases and expected values, run against this
project's functions of the same names (written here; nothing of theirs is imported).

open-r1: tests/test_rewards.py (47 tests) - every case below, except `test_get_reward_funcs`' three
remote-sandbox rewards (`code`, `ioi_code`, `binary_code`: E2B/Piston/Morph services; the sandboxed
`code_reward` here is the local counterpart) and two deliberate differences of `format_reward` /
`tag_count_reward`, whose R1 format does not require newlines (the peers' cases are kept where they
hold for both and the difference is asserted). TRL: tests/test_rewards.py (38 tests), every case; its
accuracy cases run with `extraction="math_verify"` (TRL's extraction; the default here reads the R1
`<answer>` tag first).
"""

import pickle
import threading

import pytest

from r1_lightning.rewards import (
    accuracy_reward,
    format_reward,
    get_code_format_reward,
    get_cosine_scaled_reward,
    get_repetition_penalty_reward,
    get_soft_overlong_punishment,
    len_reward,
    reasoning_accuracy_reward,
    reasoning_steps_reward,
    tag_count_reward,
    think_format_reward,
)
from r1_lightning.rewards.registry import build_reward


def chat(*texts):
    return [[{"content": text}] for text in texts]


# --------------------------------------------------------------------------------------------- open-r1
def test_openr1_get_reward_funcs_names():
    """open-r1 looks rewards up by name; here the same functions resolve by their names (factories
    through `factory_args`), with the same `__name__`."""
    specs = {
        "accuracy_reward": 1.0,
        "format_reward": 1.0,
        "reasoning_steps_reward": 1.0,
        "cosine": {"function": "get_cosine_scaled_reward", "factory_args": {"max_len": 1000}},
        "repetition": {
            "function": "get_repetition_penalty_reward",
            "factory_args": {"ngram_size": 3, "max_penalty": -1},
        },
        "len_reward": 1.0,
        "tag_count_reward": 1.0,
        "code_format": {"function": "get_code_format_reward", "factory_args": {"language": "python"}},
        "overlong": {
            "function": "get_soft_overlong_punishment",
            "factory_args": {"max_completion_len": 100, "soft_punish_cache": 20},
        },
    }
    names = [build_reward(name, spec).fn.__name__ for name, spec in specs.items()]
    assert names == [
        "accuracy_reward",
        "format_reward",
        "reasoning_steps_reward",
        "cosine_scaled_reward",
        "repetition_penalty_reward",
        "len_reward",
        "tag_count_reward",
        "code_format_reward",
        "soft_overlong_punishment_reward",
    ]


def test_openr1_accuracy_reward_correct_wrong_and_no_latex():
    assert accuracy_reward(chat(r"\boxed{\frac{63}{400}}"), [r"\frac{63}{400}"]) == [1.0]
    assert accuracy_reward(chat(r"\boxed{\frac{64}{400}}"), [r"\frac{63}{400}"]) == [0.0]
    assert accuracy_reward(chat(r"\boxed{3}"), ["6"]) == [0.0]


def test_openr1_multiple_completions():
    rewards = accuracy_reward(chat(r"\boxed{\frac{63}{400}}", r"\boxed{\frac{64}{400}}"), [r"\frac{63}{400}"] * 2)
    assert rewards == [1.0, 0.0]


def test_openr1_format_reward_correct_and_specific_multiline():
    assert format_reward(chat("<think>\nSome reasoning\n</think>\n<answer>\nThe answer\n</answer>")) == [1.0]
    long = (
        "<think>\nI will count each distinct object in the image:\n1. Purple scooter\n2. Red bicycle\n3. Green "
        "motorcycle\n4. Gray sedan\n5. Yellow school bus\n6. Small green double-decker bus\n7. Small red car\n8. "
        "Small purple car\n9. Small gray dirt bike\n\nThere are 9 distinct objects in total.\n</think>\n<answer>\n9"
        "\n</answer>"
    )
    assert format_reward(chat(long)) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "<think>Only thinking</think>",
        "<answer>Only answer</answer>",
        "No tags at all",
        "<think>Missing closing</think><answer>Missing closing",
        "<think>Wrong order</answer><answer>Wrong order</think>",
    ],
)
def test_openr1_format_reward_incorrect(text):
    assert format_reward(chat(text)) == [0.0]


def test_format_reward_deliberate_difference_newlines_are_optional():
    # open-r1 requires a newline after each tag; the R1-Zero template shows none ("<think> reasoning
    # process here </think> <answer> answer here </answer>"), so this project does not.
    assert format_reward(chat("<think>reasoning</think><answer>4</answer>")) == [1.0]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Step 1: First step\nStep 2: Second step\nStep 3: Third step", 1.0),
        ("First, we do this.\nSecond, we do that.\nFinally, we conclude.", 1.0),
        ("Step 1: Only step", 1 / 3),
        ("First, we do this.\nFinally, we conclude.", 2 / 3),
        ("Just plain text without any clear steps", 0.0),
    ],
)
def test_openr1_reasoning_steps_reward(text, expected):
    assert reasoning_steps_reward(chat(text))[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    "content,solution,length,expected",
    [
        (r"\boxed{\frac{63}{400}}", r"\frac{63}{400}", 20, 0.943),
        (r"\boxed{\frac{63}{400}}", r"\frac{63}{400}", 80, 0.547),
        (r"\boxed{\frac{64}{400}}", r"\frac{63}{400}", 20, -0.942),
        (r"\boxed{\frac{64}{400}}", r"\frac{63}{400}", 80, -0.547),
    ],
)
def test_openr1_cosine_scaled_reward(content, solution, length, expected):
    fn = get_cosine_scaled_reward(
        min_value_wrong=-1.0, max_value_wrong=-0.5, min_value_correct=0.5, max_value_correct=1.0, max_len=100
    )
    padded = content + " " * (length - len(content))  # open-r1 measures characters
    assert fn(chat(padded), [solution])[0] == pytest.approx(expected, abs=5e-3)


def test_openr1_len_reward_same_length():
    assert len_reward(chat(r"\boxed{\frac{63}{400}}", r"\boxed{\frac{64}{400}}"), [r"\frac{63}{400}"] * 2) == [0.0, 0.0]


def test_openr1_len_reward_different_lengths_correct():
    rewards = len_reward(
        chat(r"\boxed{\frac{63}{400}}", r"\boxed{\frac{63}{400}}  " + "x" * 10), [r"\frac{63}{400}"] * 2
    )
    assert rewards[0] > rewards[1] and rewards[0] == pytest.approx(0.5)


def test_openr1_len_reward_different_lengths_incorrect():
    rewards = len_reward(
        chat(r"\boxed{\frac{64}{400}}", r"\boxed{\frac{64}{400}}  " + "x" * 10), [r"\frac{63}{400}"] * 2
    )
    assert rewards[0] <= 0.0 and rewards[1] <= 0.0 and rewards[0] > rewards[1]


def test_openr1_len_reward_mixed_correctness():
    completions = chat(
        r"\boxed{\frac{63}{400}}",
        r"\boxed{\frac{63}{400}}  " + "x" * 10,
        r"\boxed{\frac{64}{400}}",
        r"\boxed{\frac{64}{400}}  " + "x" * 10,
    )
    rewards = len_reward(completions, [r"\frac{63}{400}"] * 4)
    assert rewards[0] > 0.0
    assert rewards[2] > rewards[1] and rewards[1] >= rewards[3]
    assert rewards[2] <= 0.0 and rewards[3] <= 0.0
    assert rewards[0] > rewards[1] and rewards[2] > rewards[3]


def test_openr1_len_reward_unparseable_solution():
    rewards = len_reward(chat(r"\boxed{answer}", r"\boxed{answer} " + "x" * 10), ["unparseable_latex"] * 2)
    assert rewards[0] > rewards[1] and rewards[0] == pytest.approx(0.5)


def test_openr1_repetition_positive_max_penalty_raises():
    with pytest.raises(ValueError):
        get_repetition_penalty_reward(ngram_size=2, max_penalty=1.0)
    with pytest.raises(ValueError, match="max_penalty 1.5 should not be positive"):
        get_repetition_penalty_reward(ngram_size=2, max_penalty=1.5)


@pytest.mark.parametrize(
    "ngram,penalty,texts,expected",
    [
        (2, -1.0, ["this is a test sentence"], [0.0]),  # no repetition
        (2, -1.0, ["this this this this this"], [-0.75]),  # full repetition
        (2, -1.0, ["this is a this is a test"], [-1 / 3]),  # partial
        (3, -0.5, ["this is a test", "test test test test"], [0.0, -0.25]),  # several completions
        (2, -1.0, [""], [0.0]),  # empty
        (3, -2.0, ["this is a this is a test"], [-0.4]),  # another n-gram size
        (3, -1.0, ["word"], [0.0]),
        (3, -1.0, ["two words"], [0.0]),
        (3, -1.0, ["three different words"], [0.0]),
        (3, -1.0, ["word word word word"], [-0.5]),
        (3, -1.0, ["one two one two"], [0.0]),
        (3, -0.5, ["A B C A B"], [0.0]),
        (3, -1.0, ["A B C A B C"], [-0.25]),
        (3, -1.0, ["A B C A B C E F G A B C A B C"], [-0.3846]),
        (3, -1.0, ["A B C D E F G H I J K L"], [0.0]),
    ],
)
def test_openr1_repetition_penalty_on_words(ngram, penalty, texts, expected):
    rewards = get_repetition_penalty_reward(ngram_size=ngram, max_penalty=penalty)(chat(*texts))
    assert rewards == [pytest.approx(e, abs=1e-4) for e in expected]


def test_openr1_repetition_mixed_case():
    fn = get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
    rewards = fn(chat("This is A Test", "this IS a test"))
    assert rewards[0] == pytest.approx(rewards[1])


def test_openr1_full_repetition_with_language():
    assert get_repetition_penalty_reward(2, -1.0, language="en")(chat("that that that that that")) == [-0.75]
    assert get_repetition_penalty_reward(2, -1.0, language="zh")(chat("这个这个这个这个这个")) == [-0.75]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>\nSome reasoning\n</think>\n<answer>\nThe answer\n</answer>", 1.0),
        ("Some reasoning\n</think>\n<answer>\nThe answer\n</answer>", 0.75),
        ("<think>\nSome reasoning\n<answer>\nThe answer\n</answer>", 0.75),
        ("<think>\nSome reasoning\n</think>\nThe answer\n</answer>", 0.75),
        ("<think>\nSome reasoning\n</think>\n<answer>\nThe answer", 0.75),
        ("Some reasoning\nThe answer", 0.0),
    ],
)
def test_openr1_tag_count_rewards(text, expected):
    assert tag_count_reward(chat(text)) == [expected]


@pytest.mark.parametrize("length,expected", [(50, 0.0), (110, -1.0), (90, -0.5)])
def test_openr1_soft_overlong_punishment(length, expected):
    fn = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)
    assert fn([[1] * length])[0] == pytest.approx(expected, abs=1e-4)
    assert fn(completion_ids=[[1] * length])[0] == pytest.approx(expected, abs=1e-4)


def test_openr1_code_format_correct_python():
    text = "<think>\nLet's solve this\nStep 1: First step\n</think>\n<answer>\n```python\ndef hello():\n    print('world')\n```\n</answer>"
    assert get_code_format_reward(language="python")(chat(text)) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "```python\ndef hello():\n    print('world')\n```",
        "<think>Some thinking</think><answer>Just plain text</answer>",
        "<think>Analysis</think><answer>```javascript\nconsole.log('hello');\n```</answer>",
        "<think>Analysis</think><answer>```\ndef hello(): pass\n```</answer>",
        "<answer>```python\ndef hello(): pass\n```</answer><think>Analysis</think>",
    ],
)
def test_openr1_code_format_incorrect(text):
    assert get_code_format_reward(language="python")(chat(text)) == [0.0]


def test_openr1_code_format_multiple_blocks_languages_and_multiline():
    multiple = "<think>\nHere's an example:\n```python\nx = 1\n```\nNow the solution:\n</think>\n<answer>\n```python\ndef solution():\n    return 42\n```\n</answer>"
    assert get_code_format_reward("python")(chat(multiple)) == [1.0]
    js = "<think>\nAnalysis\n</think>\n<answer>\n```javascript\nconsole.log('hello');\n```\n</answer>"
    assert get_code_format_reward("javascript")(chat(js)) == [1.0]
    assert get_code_format_reward("python")(chat(js)) == [0.0]
    multiline = "<think>\nHere's the analysis\n</think>\n<answer>\n```python\nclass Solution:\n    def __init__(self):\n        self.value = 42\n        \n    def get_value(self):\n        return self.value\n```\n</answer>"
    assert get_code_format_reward("python")(chat(multiline)) == [1.0]


# ------------------------------------------------------------------------------------------------- TRL
@pytest.mark.parametrize(
    "text",
    [
        "<think>This is my reasoning.</think>This is my answer.",
        "<think>\nThis is my reasoning.\n</think>\nThis is my answer.",
        "<think>\nThis is\nmy reasoning.\n</think>\nThis is my answer.",
        "<think>\nThis is <some tag> my reasoning.</think>\nThis is my answer.",
        "<think></think>\nThis is my answer.",
    ],
)
def test_trl_think_format_valid(text):
    assert think_format_reward(chat(text)) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "<think>\nThis is my reasoning.\nThis is my answer.",
        "<think>This is my reasoning.\nThis is my answer.",
        "This is my reasoning. This is my answer.",
        "This is my reasoning.\nThis is my answer.",
        "This is my reasoning.</think>\nThis is my answer.",
        "This is my reasoning.</think>This is my answer.",
        "This<think>is my reasoning.</think>\nThis is my answer.",
        "<think>This is<think>my reasoning.</think></think>This is my answer.",
        "<think>This is</think>\nmy\n<think>reasoning.</think>\nThis is my answer.",
    ],
)
def test_trl_think_format_invalid(text):
    assert think_format_reward(chat(text)) == [0.0]


def test_trl_think_format_mixed():
    texts = [
        "<think>This is my reasoning.</think>This is my answer.",
        "<think>\nThis is my reasoning.\n</think>\nThis is my answer.",
        "<think>This is my reasoning.\nThis is my answer.",
        "This is my reasoning. This is my answer.",
    ]
    assert think_format_reward(chat(*texts)) == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "ngram,penalty,ids,expected",
    [
        (2, -1.0, [[1, 2, 3, 4]], [0.0]),
        (2, -1.0, [[5, 5, 5, 5, 5]], [-0.75]),
        (2, -1.0, [[1, 2, 1, 2, 1, 2]], [-0.6]),
        (3, -1.0, [[1, 2]], [0.0]),
        (3, -1.0, [[1, 2, 3]], [0.0]),
        (3, -1.0, [[]], [0.0]),
        (2, -0.5, [[5, 5, 5, 5, 5]], [-0.375]),
        (2, -1.0, [[1, 2, 3, 1, 2, 3]], [-0.4]),
        (3, -1.0, [[1, 2, 3, 1, 2, 3]], [-0.25]),
        (2, -1.0, [[1, 2, 3, 4], [5, 5, 5, 5, 5], [9]], [0.0, -0.75, 0.0]),
    ],
)
def test_trl_repetition_penalty_on_tokens(ngram, penalty, ids, expected):
    assert get_repetition_penalty_reward(ngram_size=ngram, max_penalty=penalty)(ids) == [
        pytest.approx(e) for e in expected
    ]


def test_trl_repetition_positive_max_penalty_raises_extra_kwargs_and_pickling():
    with pytest.raises(ValueError):
        get_repetition_penalty_reward(ngram_size=2, max_penalty=0.5)
    fn = get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
    assert fn([[5, 5, 5, 5, 5]], prompts=["x"], completions=[[{"content": "5 5 5 5 5"}]]) == [pytest.approx(-0.75)]
    unpickled = pickle.loads(pickle.dumps(fn))
    assert unpickled([[5, 5, 5, 5, 5]]) == [pytest.approx(-0.75)] and unpickled.__name__ == "repetition_penalty_reward"


def test_trl_accuracy_reward():
    mv = {"extraction": "math_verify"}
    assert accuracy_reward(
        chat(r"\boxed{\frac{63}{400}}", r"\boxed{\frac{63}{400}}"), [r"\frac{63}{400}", "63/400"], **mv
    ) == [1.0, 1.0]
    assert accuracy_reward(chat(r"\boxed{\frac{64}{400}}"), [r"\frac{63}{400}"], **mv) == [0.0]
    assert accuracy_reward(chat(r"\boxed{3}"), ["6"], **mv) == [0.0]
    unparsable = accuracy_reward(
        chat("Answer is forty two.", r"Some other content. \boxed{43}."),
        ["Answer is forty two.", "Answer is forty three."],
        **mv,
    )
    assert unparsable == [None, None]


def test_trl_accuracy_reward_in_worker_thread():
    results, errors = [], []

    def target():
        try:
            results.extend(accuracy_reward(chat(r"\boxed{\frac{1}{3}}"), [r"\frac{1}{3}"], extraction="math_verify"))
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    assert not errors and results == [1.0]


def test_trl_reasoning_accuracy_reward():
    assert reasoning_accuracy_reward(
        chat(
            r"<think> Reasoning content </think> \boxed{\frac{63}{400}}",
            r"Reasoning content </think> \boxed{\frac{63}{400}}",
        ),
        [r"\frac{63}{400}"] * 2,
    ) == [1.0, 1.0]
    assert reasoning_accuracy_reward(
        chat(r"<REASONING_START> Reasoning content </REASONING_END> \boxed{\frac{63}{400}}"),
        [r"\frac{63}{400}"],
        reasoning_delimiters=["</REASONING_END>"],
    ) == [1.0]
    assert reasoning_accuracy_reward(
        chat(r"<think> Reasoning content </think> \boxed{\frac{64}{400}}"), [r"\frac{63}{400}"]
    ) == [0.0]
    assert reasoning_accuracy_reward(
        chat(
            r"<think> My answer is \boxed{42} </think> Some other text.",
            r"<think> The answer is \boxed{42} </think> Here's a wrong answer: \boxed{43}.",
        ),
        [r"\boxed{42}"] * 2,
    ) == [0.0, 0.0]
    assert reasoning_accuracy_reward(
        chat(
            r"<think> Incomplete reasoning without closing tag",
            r"Correct answer \frac{63}{400} but completely missing reasoning content",
        ),
        [r"\frac{63}{400}"] * 2,
    ) == [0.0, 0.0]
    assert reasoning_accuracy_reward(chat(r"<think> Reasoning content </think> \boxed{42}"), ["forty two"]) == [None]


@pytest.mark.parametrize(
    "contents,solution,lengths,expected",
    [
        ([r"\boxed{\frac{1}{3}}"] * 2, r"\frac{1}{3}", [25, 75], [0.92678, 0.57322]),  # correct: shorter is better
        ([r"\boxed{\frac{1}{2}}"] * 2, r"\frac{1}{3}", [25, 75], [-0.92678, -0.57322]),  # wrong: longer penalised less
        ([r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"], r"\frac{1}{3}", [50, 50], [0.75, -0.75]),  # midpoint
        ([r"\boxed{\frac{1}{3}}"] * 2, r"\frac{1}{3}", [0, 100], [1.0, 0.5]),  # correct bounds
        ([r"\boxed{\frac{1}{2}}"] * 2, r"\frac{1}{3}", [0, 100], [-1.0, -0.5]),  # wrong bounds
        ([r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"], r"\frac{1}{3}", [200, 200], [0.5, -0.5]),  # clamped
    ],
)
def test_trl_cosine_scaled_reward(contents, solution, lengths, expected):
    fn = get_cosine_scaled_reward(max_len=100, extraction="math_verify")
    rewards = fn(chat(*contents), [solution] * len(contents), [[1] * n for n in lengths])
    assert rewards == [pytest.approx(e, abs=1e-4) for e in expected]


def test_trl_cosine_unparsable_gold_custom_bounds_and_pickling():
    fn = get_cosine_scaled_reward(max_len=100, extraction="math_verify")
    assert fn(chat(r"\boxed{42}"), ["forty two"], [[1] * 50]) == [None]
    custom = get_cosine_scaled_reward(max_len=100, min_value_correct=0.0, max_value_correct=2.0)
    assert custom(chat(r"\boxed{\frac{1}{3}}"), [r"\frac{1}{3}"], [[1] * 50]) == [pytest.approx(1.0)]
    unpickled = pickle.loads(pickle.dumps(fn))
    assert unpickled(chat(r"\boxed{\frac{1}{3}}"), [r"\frac{1}{3}"], [[1] * 50]) == [pytest.approx(0.75)]
    assert unpickled.__name__ == "cosine_scaled_reward"
