"""Tools for tests/test_tools.py (dotted paths: ``helpers.tools.add``): a calculator, and the bad ones."""

import time


def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: the first number
        b: the second number
    """
    return int(a) + int(b)


def crash(a: int) -> int:
    """A tool that raises.

    Args:
        a: anything
    """
    raise ZeroDivisionError("division by zero")


def hang(a: int) -> int:
    """A tool that never returns.

    Args:
        a: anything
    """
    time.sleep(3600)
    return a


def shout(a: int) -> str:
    """A tool that prints megabytes and returns megabytes.

    Args:
        a: anything
    """
    print("A" * 5_000_000)
    return "B" * 5_000_000


class Tally:
    """A stateful environment: its public methods are tools; one instance per completion."""

    def reset(self, answer: str = "", **record) -> None:
        self.total, self.answer = 0, answer

    def bump(self, by: int) -> int:
        """Add to this completion's running total and return it.

        Args:
            by: how much to add
        """
        self.total += int(by)
        return self.total


def tally_reward(completions, environments, **kwargs):
    """Scores each completion by its environment's final total (TRL passes environments to rewards)."""
    return [float(env.total) for env in environments]


def used_a_tool_reward(completions, tool_calls, **kwargs):
    """1 when the completion's first call succeeded (rewards receive each completion's calls)."""
    return [1.0 if calls and calls[0]["status"] == "ok" else 0.0 for calls in tool_calls]
