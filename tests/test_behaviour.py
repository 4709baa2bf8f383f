"""R1's behaviours as metrics (response length, reflective words) and the reward-hacking alarms."""

import pytest

from r1_lightning.evaluation.behaviour import HackingAlarms, reflective_word_counts


def test_reflective_words_are_whole_words_in_any_case_and_configurable():
    texts = ["Wait, I made a MISTAKE; however it checks out. Checking again.", "waiting for the bus", ""]
    assert reflective_word_counts(texts) == [3, 0, 0]  # "checks"/"Checking" are not "check"
    assert reflective_word_counts(texts, ["again", "wait"]) == [2, 0, 0]
    assert reflective_word_counts(texts, []) == [0, 0, 0]


def _log(fmt, acc, length=20.0, truncated=0.0):
    return {"train/reward/format_reward": fmt, "train/reward/accuracy_reward": acc,
            "train/completion_length": length, "train/truncated_fraction": truncated}  # fmt: skip


def test_format_rising_while_accuracy_falls_warns_once_until_it_clears():
    alarms = HackingAlarms(window=2, min_change=0.05)
    assert alarms.update(_log(0.5, 0.5)) == [] and alarms.update(_log(0.5, 0.5)) == []
    assert alarms.update(_log(0.7, 0.4)) == []  # only one window of evidence yet
    (warning,) = alarms.update(_log(0.9, 0.3))
    assert "reward hacking" in warning and "format reward rose by +0.300" in warning
    assert alarms.active == {"format_up_accuracy_down"}
    assert alarms.update(_log(0.95, 0.2)) == []  # still active: not repeated
    alarms.update(_log(0.9, 0.6))
    alarms.update(_log(0.9, 0.7))
    assert "format_up_accuracy_down" not in alarms.active  # accuracy recovered: cleared


def test_format_and_accuracy_rising_together_is_not_hacking():
    alarms = HackingAlarms(window=2)
    for fmt, acc in [(0.1, 0.1), (0.2, 0.1), (0.6, 0.4), (0.9, 0.6)]:
        assert alarms.update(_log(fmt, acc)) == []


@pytest.mark.parametrize("length,name", [(4.0, "length_collapse"), (90.0, "length_explosion")])
def test_length_collapse_and_explosion_against_the_start(length, name):
    alarms = HackingAlarms()
    alarms.update(_log(0.5, 0.5, length=20.0))
    (warning,) = alarms.update(_log(0.5, 0.5, length=length))
    assert name in alarms.active and "from 20.0 at the start" in warning


def test_truncation_dominating_warns_and_state_round_trips():
    alarms = HackingAlarms()
    (warning,) = alarms.update(_log(0.5, 0.5, truncated=0.8))
    assert "80% of completions hit max_new_tokens" in warning
    restored = HackingAlarms()
    restored.restore(alarms.state())
    assert restored.active == {"truncation"} and restored.update(_log(0.5, 0.5, truncated=0.9)) == []
