"""SeqFT: full fine-tuning of every backbone parameter, task after task (the forgetting baseline)."""
from .base import Method


class SeqFT(Method):
    name = "seqft"
    description = "sequential full fine-tuning of all parameters"
    composable_with = ("migu", "replay", "ewc")
    full_finetuning = True
    pet_kind = "full"

    def setup(self, model, backbone):
        model.requires_grad_(True)
