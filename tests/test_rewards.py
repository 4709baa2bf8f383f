"""Reward functions: math equivalences, strict format, registry and error messages."""

import pytest

from r1_lightning.rewards import (
    accuracy_reward,
    build_rewards,
    countdown_reward,
    extract_answer,
    format_reward,
    resolve_reward,
    score_completions,
    tag_count_reward,
)


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [
        ("0.5", r"\frac{1}{2}", 1.0),
        (r"\frac{1}{2}", "0.5", 1.0),
        ("42", "42.0", 1.0),
        ("1/2", r"\frac{1}{2}", 1.0),
        (r"\sqrt{4}", "2", 1.0),
        ("x+1", "1+x", 1.0),
        ("41", "42", 0.0),
        ("Paris", "paris", 1.0),
        ("London", "Paris", 0.0),
    ],
)
def test_accuracy_math_equivalence(predicted, gold, expected):
    completion = f"<think>work</think> <answer>{predicted}</answer>"
    assert accuracy_reward([completion], answer=[gold]) == [expected]


def test_accuracy_reads_boxed_parts_without_tags_and_chat_messages():
    assert accuracy_reward([r"so the answer is \boxed{7}"], answer=["7"]) == [1.0]
    # several boxed parts are one answer listing them, as Math-Verify reads them: {3, 7} is not 7
    assert accuracy_reward([r"so \boxed{3} then \boxed{7}"], answer=["7"], timeout_seconds=None) == [0.0]
    assert accuracy_reward([r"so \boxed{3} then \boxed{7}"], answer=["3, 7"], timeout_seconds=None) == [1.0]
    assert accuracy_reward([[{"role": "assistant", "content": "<answer>7</answer>"}]], answer=["7"]) == [1.0]
    assert accuracy_reward(["the answer is 7"], answer=["7"]) == [0.0]


def test_extract_answer_prefers_last_tag():
    assert extract_answer("<answer>1</answer> <answer>2</answer>") == "2"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        (" <think>\nmulti\nline\n</think>\n<answer> 4 </answer>\n", 1.0),
        ("<think>a</think>", 0.0),
        ("<answer>b</answer>", 0.0),
        ("<think>a</think><answer>b</answer> trailing", 0.0),
        ("<think>a<think>b</think><answer>c</answer>", 0.0),
        ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0),
        ("<answer>b</answer><think>a</think>", 0.0),
    ],
)
def test_format_reward_is_strict(text, expected):
    assert format_reward([text]) == [expected]


def test_tag_count_partial_credit():
    assert tag_count_reward(["<think>a</think><think>", "<answer>x</answer>"]) == [0.25, 0.5]


def test_countdown_reward_needs_each_number_once_and_the_target():
    numbers, target = [[4, 7, 9]], [19]
    assert countdown_reward(["<answer>(9 - 4) + 7 + 7</answer>"], numbers=numbers, target=target) == [0.0]
    assert countdown_reward(["<answer>4 + 7 + 9 - 1</answer>"], numbers=numbers, target=target) == [0.0]
    assert countdown_reward(["<answer>9 * 7 - 44</answer>"], numbers=numbers, target=target) == [0.0]
    assert countdown_reward(["<answer>(4 * 7) - 9</answer>"], numbers=numbers, target=target) == [1.0]
    assert countdown_reward(["<answer>__import__('os')</answer>"], numbers=numbers, target=target) == [0.0]


def test_registry_by_name_and_dotted_path():
    assert resolve_reward("format_reward") is format_reward
    assert resolve_reward("r1_lightning.rewards.accuracy.accuracy_reward") is accuracy_reward


def test_registry_unknown_name_suggests_the_right_one():
    with pytest.raises(ValueError, match="Did you mean 'accuracy_reward'"):
        resolve_reward("acuracy_reward")
    with pytest.raises(ValueError, match="could not be imported"):
        resolve_reward("no_such_package.reward")
    with pytest.raises(ValueError, match="empty"):
        build_rewards({})


def test_weighted_sum_and_none_scores():
    rewards = build_rewards({"accuracy_reward": 1.0, "format_reward": 0.5})
    completions = ["<think>t</think><answer>4</answer>", "<answer>5</answer>", "<think>t</think><answer>1</answer>"]
    totals, per_fn = score_completions(rewards, completions, {"answer": ["4", "4", None]})
    assert totals == [1.5, 0.0, 0.5]
    assert per_fn["accuracy_reward"] == [1.0, 0.0, None]
    assert per_fn["format_reward"] == [1.0, 0.0, 1.0]


def _raising_reward(completions, **kwargs):
    raise KeyError("solution")


def _nan_reward(completions, **kwargs):
    return [float("nan")] * len(completions)


def _short_reward(completions, **kwargs):
    return [1.0]


def test_failing_reward_names_function_and_completion():
    rewards = build_rewards({f"{__name__}._raising_reward": 1.0})
    with pytest.raises(RuntimeError, match=r"'_raising_reward' raised KeyError.*the bad completion"):
        score_completions(rewards, ["the bad completion"], {})
    with pytest.raises(ValueError, match="'_nan_reward' returned nan"):
        score_completions(build_rewards({f"{__name__}._nan_reward": 1.0}), ["x"], {})
    with pytest.raises(ValueError, match="returned 1 scores for 2 completions"):
        score_completions(build_rewards({f"{__name__}._short_reward": 1.0}), ["x", "y"], {})


def test_several_boxed_parts_compare_as_a_set_or_tuple_as_math_verify_reads_them():
    completions = [
        r"\boxed{(2,2)} and \boxed{(6,2)}",
        r"<answer>\boxed{(6,2)}, \boxed{(2,2)}</answer>",
        r"\boxed{1}, \boxed{2}, \boxed{3}",
        r"\boxed{1}, \boxed{2}, \boxed{3}",
        r"\boxed{(6,2)}",
        r"\boxed{4}. Checking again: \boxed{4}",
    ]
    golds = [r"(2,2),(6,2)", r"\{(2,2),(6,2)\}", "1,2,3", r"\{3,2,1\}", r"(2,2),(6,2)", "4"]
    assert accuracy_reward(completions, answer=golds, timeout_seconds=None) == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_cosine_reward_skips_a_reference_math_verify_cannot_parse_as_trl_does():
    from trl.rewards import get_cosine_scaled_reward as trl_cosine

    from r1_lightning.rewards.shaping import get_cosine_scaled_reward

    completions = [[{"role": "assistant", "content": r"\boxed{42}"}]] * 3
    solution = ["forty two", r"\frac{1}{", "42"]
    ids = [[1] * 10] * 3
    ours = get_cosine_scaled_reward(max_len=100)(completions, solution=solution, completion_ids=ids)
    theirs = trl_cosine(max_len=100)(completions, solution, ids)
    assert ours[:2] == theirs[:2] == [None, None]
    assert ours[2] == pytest.approx(theirs[2])
