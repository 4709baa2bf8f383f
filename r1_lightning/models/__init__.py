"""The policy as a model: loading (hub id, folder, tiny bases; LoRA, quantisation: ``loading.py``),
sharding (FSDP2: ``strategies.py``) and per-token log-probs and entropy (``logprobs.py``)."""
