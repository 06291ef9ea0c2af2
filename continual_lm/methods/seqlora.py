"""SeqLoRA: one LoRA on the target projections, trained through the whole stream."""
from .base import LoRAMethod


class SeqLoRA(LoRAMethod):
    name = "seqlora"
    description = "one LoRA trained sequentially through all tasks"
    composable_with = ("migu", "replay", "ewc")
    uses_task_id_at_train = False  # one LoRA trained through the whole stream
    uses_task_id_at_test = False
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "lora"

    def setup(self, model, backbone):
        super().setup(model, backbone)
        self.add_task_lora()
        for bank in self.banks.values():
            bank.lora_A[0].requires_grad_(True)
            bank.lora_B[0].requires_grad_(True)
