"""Prompt templates: the R1-Zero template verbatim, the tokenizer's chat template, or a format string."""

from __future__ import annotations

from typing import Any

# DeepSeek-R1 paper, Table 1, verbatim; "{prompt}" replaces the paper's "prompt" placeholder.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {prompt}. Assistant:"
)

NAMED_TEMPLATES = {"r1_zero": R1_ZERO_TEMPLATE, "plain": "{prompt}"}
TEMPLATE_CHOICES = ("r1_zero", "chat", "plain", "<a format string containing {prompt}>")


def render_prompt(
    prompt: str | list[dict[str, Any]],
    template: str = "r1_zero",
    tokenizer: Any = None,
    system_prompt: str | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Turn a record's ``prompt`` (a string, or chat messages) into the text the model continues.

    ``template`` is ``"r1_zero"`` (the paper's template), ``"chat"`` (the tokenizer's chat template with
    the generation prompt appended; ``system_prompt`` becomes a system message), ``"plain"``, or any
    format string with a ``{prompt}`` field. ``tools``: JSON schemas of the run's tools, which a chat template
    renders (as for TRL's ``tools=``); text templates leave them out (their tag format is documented instead).

    >>> render_prompt("What is 2 + 2?", "Q: {prompt}\\nA:")
    'Q: What is 2 + 2?\\nA:'
    >>> render_prompt("2 + 2", "r1_zero").endswith("User: 2 + 2. Assistant:")
    True
    """
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "template 'chat' needs a tokenizer with a chat template; this tokenizer has none. "
                "Use `data.template: r1_zero` (or a format string), or a model with a chat template."
            )
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if system_prompt and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        return tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=True
        )  # (`or None`: some templates render tool boilerplate for an empty list)
    if isinstance(prompt, list):
        # Chat-style records under a text template: use the last user turn.
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        if not users:
            raise ValueError(f"prompt messages have no 'user' turn: {prompt!r}")
        prompt = users[-1]
    fmt = NAMED_TEMPLATES.get(template, template)
    if "{prompt}" not in fmt:
        raise ValueError(f"`data.template` must be one of {TEMPLATE_CHOICES}; got {template!r}")
    text = fmt.replace("{prompt}", prompt.rstrip().rstrip(".") if fmt is R1_ZERO_TEMPLATE else prompt)
    return f"{system_prompt}\n{text}" if system_prompt else text
