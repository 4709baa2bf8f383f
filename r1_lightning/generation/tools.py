"""Tool calls inside the rollout (TRL's ``tools=`` / ``environment_factory``, ``max_tool_calling_iterations``).

The format is Hermes / Qwen2.5's, which their chat templates render and expect, and which this project
also uses under text templates (``r1_zero``, ``plain``) as its documented tag format::

    <tool_call>{"name": "add", "arguments": {"a": 17, "b": 25}}</tool_call><tool_response>42</tool_response>

The policy writes everything up to ``</tool_call>``; the decode loop (``generation/sampler.py``) parses the
call, runs it here, and inserts ``<tool_response>...</tool_response>`` as tokens that were not sampled (mask 0
for the loss, the KL, the entropy and the length metrics). Under a chat template the response is wrapped the
way the template renders a tool turn (:func:`chat_tool_wrapper`, as TRL does: ``data.template: chat``).

Tools are plain Python functions with type hints and a docstring (their JSON schema comes from
``transformers.utils.get_json_schema``, as in TRL). Stateless ones run in the shared pool of worker
processes (``rewards/limits.py``): a deadline per call (``tool_timeout``), a call that hangs is killed, and
what a tool prints is captured and capped. Stateful tools come from an ``environment_factory`` (a class
whose public methods are the tools; one instance per completion, ``reset(**record)`` before each rollout
when it has one); they run in the trainer's process, on a thread with the same deadline (a hung one is
abandoned, not killed: a documented limit of in-process state).

Bad input never ends a run: a malformed call, an unknown tool, one that raises, hangs, prints megabytes,
or a call past ``max_tool_calling_iterations`` each get a short error message as the tool response, are
counted (``train/tools/{errors,timeouts}``), and decoding goes on.
"""

from __future__ import annotations

import importlib
import inspect
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from r1_lightning.generation._tool_call import invoke_tool
from r1_lightning.tools.format import CALL_CLOSE, CALL_OPEN, CALL_PATTERN, RESPONSE_CLOSE, RESPONSE_OPEN

__all__ = ["CALL_CLOSE", "CALL_OPEN", "RESPONSE_CLOSE", "RESPONSE_OPEN", "ToolBox", "ToolCall", "parse_call"]


@dataclass
class ToolCall:
    """One call as the policy wrote it, and what came of it."""

    name: str
    arguments: dict[str, Any]
    status: str = "pending"  # ok | error | timeout | malformed | unknown | limit
    result: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "status": self.status, "result": self.result}


def parse_call(text: str) -> ToolCall:
    """The last complete ``<tool_call>...</tool_call>`` of ``text``; ``status == "malformed"`` when it is not
    a JSON object with a string ``name`` and an object ``arguments``.

    >>> parse_call('x <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>').arguments
    {'a': 1}
    >>> parse_call("<tool_call>add(1, 2)</tool_call>").status
    'malformed'
    """
    matches = CALL_PATTERN.findall(text)
    if not matches:
        return ToolCall("", {}, "malformed", "no <tool_call>...</tool_call> found")
    body = matches[-1]
    try:
        call = json.loads(body)
    except ValueError:
        return ToolCall("", {}, "malformed", f"a tool call must be JSON with a name and arguments; got {body[:60]!r}")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ToolCall("", {}, "malformed", 'a tool call needs a "name" (string)')
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # some templates serialise the arguments a second time
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    if not isinstance(arguments, dict):
        return ToolCall(call["name"], {}, "malformed", '"arguments" must be an object')
    return ToolCall(call["name"], arguments)


def resolve_callable(path: str | Any, what: str) -> Any:
    """A function or class from a dotted path (``package.module.name``), or the object itself."""
    if not isinstance(path, str):
        return path
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        hint = "give a dotted path to a module-level object"
        raise ValueError(f"{what} {path!r} cannot be imported ({err}); {hint}") from err


def tool_schema(fn: Any) -> dict[str, Any]:
    """The JSON schema a chat template renders for ``fn`` (TRL's, from its type hints and docstring)."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as err:  # transformers raises its own TypeError subclasses, naming the problem
        raise ValueError(
            f"tool {getattr(fn, '__name__', fn)!r}: {err}. A tool needs type hints on every argument and a docstring "
            "with an `Args:` section (as for TRL's tools=)"
        ) from err


@dataclass
class ToolBox:
    """The tools of a run and how calls are executed (module docstring).

    Args:
        tools: functions (or dotted paths to them).
        environment_factory: a class (or dotted path) whose public methods are tools, one instance per completion.
        max_iterations: tool calls allowed per completion (``max_tool_calling_iterations``).
        timeout: seconds per call.
        max_output_chars: a tool's response (printed output and result) is cut to this many characters.
    """

    tools: list[Any] = field(default_factory=list)
    environment_factory: Any = None
    max_iterations: int = 4
    timeout: float = 5.0
    max_output_chars: int = 512
    turn: tuple[str, str] | None = None  # (before, after) a result: a chat template's tool turn; None: tags

    def __post_init__(self) -> None:
        self.functions = {fn.__name__: fn for fn in (resolve_callable(t, "tool") for t in self.tools)}
        factory = self.environment_factory
        self.factory = resolve_callable(factory, "environment_factory") if factory else None
        methods = _public_methods(self.factory) if self.factory is not None else {}
        clash = set(methods) & set(self.functions)
        if clash:
            raise ValueError(f"tools and environment_factory both define {sorted(clash)}; rename one")
        self.schemas = [tool_schema(fn) for fn in (*self.functions.values(), *methods.values())]
        self.names = [schema["function"]["name"] for schema in self.schemas]
        if not self.names:
            raise ValueError("`tools` and `environment_factory` name no tool; give at least one")
        if self.max_iterations < 0 or self.timeout <= 0 or self.max_output_chars < 16:
            raise ValueError(
                "need max_tool_calling_iterations >= 0, tool_timeout > 0 and tool_output_chars >= 16, got "
                f"{self.max_iterations}, {self.timeout}, {self.max_output_chars}"
            )

    def environments(self, records: list[dict[str, Any]]) -> list[Any] | None:
        """One fresh environment per completion (``reset(**record)`` when it has one); None without a factory."""
        if self.factory is None:
            return None
        envs = []
        for record in records:
            env = self.factory()
            if hasattr(env, "reset"):
                accepted = inspect.signature(env.reset).parameters
                wants_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
                env.reset(**{k: v for k, v in record.items() if wants_all or k in accepted})
            envs.append(env)
        return envs

    def run(self, calls: list[ToolCall], environments: list[Any] | None) -> None:
        """Execute ``calls`` (set each one's ``status`` and ``result``); stateless ones in parallel in the pool."""
        from r1_lightning.rewards.limits import shared_pool

        pooled = []
        for index, call in enumerate(calls):
            if call.status != "pending":
                continue
            if call.name in self.functions:
                pooled.append((index, (self.functions[call.name], call.arguments, self.max_output_chars)))
            elif environments is not None and call.name in _public_methods(type(environments[index])):
                _run_in_thread(call, getattr(environments[index], call.name), self.timeout, self.max_output_chars)
            else:
                call.status, call.result = "unknown", f"unknown tool {call.name!r}; tools: {', '.join(self.names)}"
        if pooled:
            outcomes = shared_pool().map(invoke_tool, [args for _, args in pooled], self.timeout)
            for (index, _), (status, value) in zip(pooled, outcomes, strict=True):
                _settle(calls[index], status, value, self.timeout)

    def read_call(self, completion_text: str, calls_made: int) -> ToolCall:
        """The call a completion just closed (its last one), refused as ``limit`` when the completion has
        already made ``max_iterations`` calls: what both the decode loop and the vLLM turns run."""
        call = parse_call(completion_text)
        if calls_made >= self.max_iterations and call.status == "pending":
            call.status = "limit"
            call.result = f"tool call limit reached ({self.max_iterations} per answer); answer now"
        return call

    def response_ids(self, call: ToolCall, tokenizer: Any) -> list[int]:
        """The token ids inserted after the call (its response, tokenized on its own)."""
        return tokenizer(self.response(call), add_special_tokens=False)["input_ids"]

    def response(self, call: ToolCall) -> str:
        """The text inserted after the call: the result, or a short error the policy can read, wrapped as a
        chat template's tool turn once :meth:`use_chat_template` found one, else in the tag format."""
        text = call.result if call.status == "ok" else f"error: {call.result}"[: self.max_output_chars]
        before, after = self.turn or (RESPONSE_OPEN, RESPONSE_CLOSE)
        return f"{before}{text}{after}"

    def use_chat_template(self, tokenizer: Any) -> bool:
        """Wrap responses as ``tokenizer``'s chat template renders a tool turn (prompts are chat-rendered);
        False, and the tag format kept, when the template has no tool turn."""
        self.turn = chat_tool_wrapper(tokenizer)
        return self.turn is not None


def chat_tool_wrapper(tokenizer: Any) -> tuple[str, str] | None:
    """The text a chat template puts before and after a tool's result when a tool turn follows the
    assistant's call, up to the next assistant generation prompt (TRL's approach: render a dummy conversation
    with and without the tool message and take the difference). For Qwen2.5 that closes the assistant turn,
    opens ``<|im_start|>user\n<tool_response>\n``, and after the result closes it and reopens
    ``<|im_start|>assistant\n``. None when the template has no chat template, fails on a ``tool`` message, or
    drops its content."""
    call_mark, result_mark = "CALL_MARK_7f3a", "RESULT_MARK_7f3a"
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": call_mark}]
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [*conversation, {"role": "tool", "content": result_mark}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # noqa: BLE001  (a template that raises on a tool role has none)
        return None
    _, found, after_call = text.partition(call_mark)
    before, found_result, after = after_call.partition(result_mark)
    return (before, after) if found and found_result else None


def _public_methods(cls: Any) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and name not in ("reset", "get_reward")
    }


def _settle(call: ToolCall, status: str, value: Any, timeout: float) -> None:
    if status == "ok":
        text, cut = value
        call.status, call.result = "ok", text + (f" [... {cut} characters cut]" if cut else "")
    elif status in ("timeout", "died"):
        call.status, call.result = "timeout", f"{call.name} timed out after {timeout:g} s"
    else:
        call.status, call.result = "error", f"{call.name} raised {str(value)[:200]}"


def _run_in_thread(call: ToolCall, method: Any, timeout: float, max_chars: int) -> None:
    """A stateful tool, in this process, with a deadline (a hung call is abandoned on its daemon thread)."""
    outcome: list[tuple[str, Any]] = []

    def target() -> None:
        try:  # (no capture of print() here: redirecting sys.stdout would affect every thread)
            result = method(**call.arguments)
            text = "" if result is None else str(result)
            outcome.append(("ok", (text[:max_chars], max(0, len(text) - max_chars))))
        except Exception as err:
            outcome.append(("error", f"{type(err).__name__}: {err}"))

    worker = threading.Thread(target=target, daemon=True, name=f"tool-{call.name}")
    worker.start()
    worker.join(timeout)
    status, value = outcome[0] if outcome else ("timeout", None)
    _settle(call, status, value, timeout)


ERROR_STATUSES = ("error", "malformed", "unknown", "limit")


def tool_stats(tool_calls: list[list[dict[str, Any]]]) -> dict[str, float]:
    """A rollout's tool metrics (logged as ``train/tools/...``): calls per completion, the share of completions
    that called a tool, turns per completion (1 + calls), and the step's failed calls and timed-out ones.

    >>> tool_stats([[{"status": "ok"}, {"status": "timeout"}], []])["tools/calls_per_completion"]
    1.0
    """
    counts = [len(row) for row in tool_calls] or [0]
    statuses = [call["status"] for row in tool_calls for call in row]
    return {
        "tools/calls_per_completion": sum(counts) / len(counts),
        "tools/completions_with_calls": sum(1 for c in counts if c) / len(counts),
        "tools/turns": 1 + sum(counts) / len(counts),
        "tools/errors": float(sum(status in ERROR_STATUSES for status in statuses)),
        "tools/timeouts": float(statuses.count("timeout")),
    }
