"""Module-level reward functions for tests (child processes import them by name)."""

import time


def slow_reward(completions, seconds: float = 30.0, **kwargs):
    time.sleep(seconds)
    return [1.0] * len(completions)


def quick_reward(completions, **kwargs):
    return [0.5] * len(completions)


HOSTILE_PROGRAMS = [
    "while True:\n    pass",
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "import os\nwhile True:\n    os.fork()",
    "x = ' ' * (10 ** 10)",
]


def hostile_code_reward(completions, **kwargs):
    """Whatever the policy wrote, score hostile programs through the sandboxed code reward."""
    from r1_lightning.rewards.code import code_reward

    programs = [f"```python\n{HOSTILE_PROGRAMS[i % len(HOSTILE_PROGRAMS)]}\n```" for i in range(len(completions))]
    return code_reward(programs, tests=[["assert True"]] * len(completions), wall_seconds=2.0, cpu_seconds=1)
