"""Writing the trained policy as a Hugging Face folder (``save_pretrained``), whole or FSDP2-sharded."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from r1_lightning.hf_compat import causal_lm
from r1_lightning.models.loading import save_policy
from r1_lightning.models.strategies import full_state_dict


class PolicyExport:
    """GRPOModule's export: :meth:`save_hf` (needs ``policy``, ``tokenizer``, ``lora``, ``_is_sharded``)."""

    def save_hf(self, directory: str | Path) -> Path:
        """Write the policy and tokenizer as a ``save_pretrained`` folder ``AutoModelForCausalLM`` loads.

        Under FSDP2 every rank must call it: gathering the full weights is a collective.
        """
        directory = Path(directory)
        if self._is_sharded():
            state = full_state_dict(self.policy)
            lm = causal_lm(self.policy)
            # a tied head is one parameter: write it once, as an unsharded save_pretrained does
            tied = getattr(lm, "all_tied_weights_keys", None) or {}
            for key, source in tied.items() if isinstance(tied, dict) else ():
                if key in state and source in state and torch.equal(state[key], state[source]):
                    del state[key]
            if self.trainer.is_global_zero:
                directory.mkdir(parents=True, exist_ok=True)
                lm.save_pretrained(directory, state_dict=state)
                self.tokenizer.save_pretrained(directory)
                rank_zero_info(f"policy exported in Hugging Face format to {directory}")
            return directory
        if self._trainer is not None and not self.trainer.is_global_zero:
            return directory
        save_policy(
            self.policy, self.tokenizer, directory, self.lora is not None, self.hparams.quantization is not None
        )
        rank_zero_info(f"policy exported in Hugging Face format to {directory}")
        return directory
