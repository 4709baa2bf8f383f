"""Math-Verify's own answer-equivalence cases (tests/data/math_verify_cases.json: the 190 parametrized
cases of Math-Verify's tests/test_all.py, MIT License) run through ``accuracy_reward``: each ``pred`` is
given as the model's final answer (``<answer>pred</answer>``) and ``gold`` as the reference.

184 of 190 agree with Math-Verify's expected verdict. The other six are known and deliberate:
- two cases expect an answer split across lines inside math delimiters (``$ \\n 9 \\n $``) to be
  rejected; this reward strips whitespace and accepts it;
- three references are whole worked solutions (hundreds of words) rather than answers, and their
  predictions likewise; Math-Verify's test extracts from both with its LaTeX-only, boxed-first setting;
- one needs ``allow_set_relation_comp`` (``x \\in [-2, 7]`` equals ``-2 \\le x \\le 7``), off here.
The count may only go up (a drop is a regression in answer checking).
"""

import json
from pathlib import Path

from r1_lightning.rewards import accuracy_reward

CASES = json.loads((Path(__file__).parent / "data" / "math_verify_cases.json").read_text())["cases"]
KNOWN_DIFFERENCES = 6


def test_math_verify_cases_through_accuracy_reward():
    failures = []
    for case in CASES:
        (score,) = accuracy_reward(
            [f"<answer>{case['pred']}</answer>"],
            answer=[case["gold"]],
            float_rounding=case["precision"],
            timeout_seconds=None,
        )
        agrees = score == 1.0 if case["expected"] else score in (0.0, None)
        if not agrees:
            failures.append((case["test"], case["gold"][:60], case["pred"][:60], case["expected"], score))
    assert len(CASES) == 190
    passed = len(CASES) - len(failures)
    print(f"Math-Verify cases through accuracy_reward: {passed}/{len(CASES)}")
    assert len(failures) <= KNOWN_DIFFERENCES, failures


def test_money_answers():
    completions = [r"\boxed{\$16386.17}", r"\boxed{\$1,000}", "<answer>$1,000</answer>", r"<answer>\$5</answer>"]
    assert accuracy_reward(completions, answer=["16386.17", "1000", "1000", "6"], timeout_seconds=None) == [
        1.0,
        1.0,
        1.0,
        0.0,
    ]
