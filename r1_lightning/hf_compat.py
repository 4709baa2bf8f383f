"""Where transformers and peft APIs differ by version or wrapper: the model inside a peft wrapper, and
the key/value cache under both of its names. Imports no other r1_lightning module.

transformers 5.24 renamed the forward argument and output field ``past_key_values`` to ``cache``; the old
name still works there but logs a deprecation on every run and goes away in 5.40, while releases before
5.24 (the vLLM CPU build pins ``transformers<5.20``) know only the old one. These helpers pick the name
the model's own ``forward`` declares, so the same code runs quietly on both.
"""

from __future__ import annotations

import inspect
from typing import Any

_NAMES: dict[type, str] = {}


def causal_lm(model: Any) -> Any:
    """The transformers ``*ForCausalLM`` inside ``model`` (a peft wrapper is looked through)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(**...)``: ``cache`` where its forward takes it, else ``past_key_values``.

    A peft wrapper forwards keyword arguments to the model inside it, so that model's forward decides.
    """
    inner = causal_lm(model)
    kind = type(inner)
    if kind not in _NAMES:
        parameters = inspect.signature(inner.forward).parameters
        _NAMES[kind] = "cache" if "cache" in parameters else "past_key_values"
    return {_NAMES[kind]: cache}


def returned_cache(output: Any) -> Any:
    """The key/value cache a forward with ``use_cache=True`` returned, under either field name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
