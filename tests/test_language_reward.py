"""R1's language-consistency reward: share of chain-of-thought words in the target language."""

import pytest

from r1_lightning.rewards import build_rewards
from r1_lightning.rewards.language import chain_of_thought, language_consistency_reward, target_word_fraction


@pytest.mark.parametrize(
    "text, language",
    [
        ("We add the two numbers and then check the result carefully.", "en"),
        ("Sumamos los dos números y luego comprobamos el resultado con cuidado.", "es"),
        ("Nous ajoutons les deux nombres puis vérifions soigneusement le résultat.", "fr"),
        ("我们先把两个数字相加，然后仔细检查结果。", "zh"),
    ],
)
def test_single_language_text_scores_one_for_its_language_and_zero_for_others(text, language):
    assert target_word_fraction(text, language) == 1.0
    other = "es" if language == "en" else "en"
    assert target_word_fraction(text, other) == 0.0


def test_mixed_text_scores_the_share_of_target_words():
    # 5 English words, then 6 Spanish words (sentence by sentence).
    text = "First we add the numbers. Luego comprobamos el resultado con cuidado."
    assert target_word_fraction(text, "en") == pytest.approx(5 / 11)
    assert target_word_fraction(text, "es") == pytest.approx(6 / 11)
    mixed_zh = "We add the numbers. 然后检查结果。"
    assert 0.0 < target_word_fraction(mixed_zh, "en") < 1.0


def test_only_the_chain_of_thought_counts_and_wordless_reasoning_is_consistent():
    completion = "<think>We add the numbers.</think> <answer>Sumamos los números y el resultado es cuatro</answer>"
    assert chain_of_thought(completion) == "We add the numbers."
    assert language_consistency_reward([completion]) == [1.0]
    assert language_consistency_reward(["<think>12+7=19</think> <answer>19</answer>"]) == [1.0]


def test_per_record_language_column_overrides_the_default():
    completions = ["<think>Sumamos los dos números.</think>"] * 2
    assert language_consistency_reward(completions, language=["es", None], default_language="en") == [1.0, 0.0]
    with pytest.raises(ValueError, match="`language` column has 1 values"):
        language_consistency_reward(completions, language=["es"])


def test_unknown_language_code_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        target_word_fraction("hello there", "xx")


def test_configured_through_the_reward_spec():
    [reward] = build_rewards(
        {"lang": {"function": "language_consistency_reward", "default_language": "fr", "weight": 0.3}}
    )
    assert reward.weight == 0.3
    assert reward.fn(["<think>Nous ajoutons les deux nombres.</think>"]) == [1.0]
