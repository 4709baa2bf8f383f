"""The key/value cache is passed and read under the name the installed transformers uses."""

import types

from r1_lightning.hf_compat import cache_argument, returned_cache


class NewStyle:
    def forward(self, input_ids=None, cache=None, use_cache=False): ...


class OldStyle:
    def forward(self, input_ids=None, past_key_values=None, use_cache=False): ...


class PeftLike:
    """peft forwards keyword arguments to the model it wraps, so the wrapped model's forward decides."""

    def __init__(self, inner):
        self.inner = inner

    def forward(self, *args, **kwargs): ...

    def get_base_model(self):
        return self.inner


def test_cache_argument_follows_the_models_forward():
    assert cache_argument(NewStyle(), "kv") == {"cache": "kv"}
    assert cache_argument(OldStyle(), "kv") == {"past_key_values": "kv"}
    assert cache_argument(PeftLike(NewStyle()), "kv") == {"cache": "kv"}


def test_returned_cache_reads_either_field():
    assert returned_cache(types.SimpleNamespace(cache="new")) == "new"
    assert returned_cache(types.SimpleNamespace(past_key_values="old")) == "old"


def test_the_installed_transformers_model_gets_a_name_it_declares(tiny_model_and_tokenizer):
    import inspect

    model, _ = tiny_model_and_tokenizer
    (name,) = cache_argument(model, None)
    assert name in inspect.signature(model.forward).parameters
