"""Rewards never hang training: adversarial answers and slow reward functions hit a deadline,
score 0 and are counted, in the main thread, in worker threads and in other processes."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from r1_lightning.rewards.accuracy import accuracy_reward
from r1_lightning.rewards.limits import TimeLimitedPool, count_reward_events
from r1_lightning.rewards.registry import build_reward, score_completions

ROOT = Path(__file__).resolve().parents[1]
ADVERSARIAL = [
    "9^{9^{9^{9}}}",  # sympy tries to evaluate a tower of powers
    "2^{2^{2^{40}}}",
    "\\frac{" * 200 + "1" + "}{2}" * 200,  # deeply nested LaTeX
    "(" * 5000 + "1" + ")" * 5000,
    "x" * 100_000,
]


def _completions(answers):
    return [f"<think>hmm</think><answer>{a}</answer>" for a in answers]


def test_adversarial_answers_are_bounded_in_the_main_thread():
    started = time.monotonic()
    scores = accuracy_reward(_completions(ADVERSARIAL + ["3", "1/2"]), answer=["3"] * 6 + ["0.5"])
    assert scores == [0.0] * 5 + [1.0, 1.0]
    # 5 comparisons, 2-second hard deadline each, run 2+ at a time (plus worker start-up).
    assert time.monotonic() - started < 30


def test_adversarial_answers_are_bounded_in_worker_threads():
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda a: accuracy_reward(_completions([a]), answer=["3"]), ADVERSARIAL[:2]))
    assert results == [[0.0], [0.0]]


def test_adversarial_answers_are_bounded_in_another_process():
    code = (
        "from r1_lightning.rewards.accuracy import accuracy_reward\n"
        f"print(accuracy_reward(['<answer>{ADVERSARIAL[0]}</answer>', '<answer>4</answer>'], answer=['3', '4']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[0.0, 1.0]"


def test_hard_deadline_kills_a_stuck_comparison_and_counts_it():
    # A deadline shorter than math-verify's own soft limit: the worker is killed mid-comparison.
    with count_reward_events() as events:
        scores = accuracy_reward(_completions([ADVERSARIAL[0], "4"]), answer=["3", "4"], timeout_seconds=0.3)
    assert scores == [0.0, 1.0]
    assert events == {"reward_timeouts/accuracy_reward": 1}
    # The pool replaced the killed worker: the next comparison works.
    assert accuracy_reward(_completions(["1/2"]), answer=["0.5"]) == [1.0]


def test_slow_reward_function_times_out_scores_zero_and_training_values_go_on():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        slow = build_reward("slow", {"function": "helpers.reward_probes.slow_reward", "timeout": 1.0, "weight": 1.0})
        quick = build_reward("quick", {"function": "helpers.reward_probes.quick_reward", "timeout": 5.0, "weight": 1.0})
    finally:
        sys.path.remove(str(ROOT / "tests"))
    started = time.monotonic()
    with count_reward_events() as events:
        totals, per_fn = score_completions([slow, quick], ["a", "b"], {})
    assert time.monotonic() - started < 10
    assert per_fn["slow"] == [0.0, 0.0] and per_fn["quick"] == [0.5, 0.5] and totals == [0.5, 0.5]
    assert events == {"reward_timeouts/slow": 1}
    with count_reward_events() as later:  # each rollout counts its own: no tally carried over
        pass
    assert later == {}


def test_timeout_must_be_positive_and_classes_are_refused():
    with pytest.raises(ValueError, match="timeout"):
        build_reward("acc", {"function": "accuracy_reward", "timeout": 0})
    with pytest.raises(ValueError, match="class"):
        build_reward("rm", {"function": "reward_model", "timeout": 1, "model": "x"})


def test_pool_survives_a_worker_that_dies_and_is_rebuilt_after_fork():
    pool = TimeLimitedPool(workers=1, preload=())
    try:
        assert pool.map(abs, [(-3,)], timeout=30) == [("ok", 3)]
        pool.workers[0].process.kill()
        pool.workers[0].process.wait()
        assert pool.map(abs, [(-4,)], timeout=30) == [("ok", 4)]
        pool.pid = -1  # as if this process were a fork of the one that started the workers
        old = pool.workers[0]
        assert pool.map(abs, [(-5,)], timeout=30) == [("ok", 5)]
        assert pool.workers[0] is not old
        old.kill()
    finally:
        pool.close()


def test_a_worker_that_dies_mid_call_scores_zero_and_is_counted():
    from r1_lightning.rewards.limits import call_with_deadline

    with count_reward_events() as events:
        assert call_with_deadline("dying", os._exit, [(3,)], timeout=30) == [None]
    assert events == {"reward_timeouts/dying": 1}
