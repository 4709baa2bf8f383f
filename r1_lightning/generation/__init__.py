"""Rollouts: the batched decode loop and the ``Rollout`` container (``rollout.py``), the lean decode step
(``lean_decode.py``), the optional vLLM engine (``vllm_engine.py``) and sampler/trainer mismatch
(``mismatch.py``)."""
