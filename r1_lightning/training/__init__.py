"""The LightningModules and their pure math: GRPO (``grpo.py``, the loss in ``losses.py``), SFT (``sft.py``)
and Bradley-Terry reward models (``reward_model.py``)."""
