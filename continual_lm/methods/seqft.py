"""SeqFT: full fine-tuning of every backbone parameter, task after task (the forgetting baseline)."""
from .base import Method


class SeqFT(Method):
    name = "seqft"
    description = "sequential full fine-tuning of all parameters"
    composable_with = ("migu", "replay", "ewc")
    full_finetuning = True
    uses_task_id_at_train = False  # one model trained through the whole stream
    uses_task_id_at_test = False
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "full"

    def setup(self, model, backbone):
        model.requires_grad_(True)
