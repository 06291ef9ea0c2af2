"""Reference runs: multi-task learning (the upper bound) and single-task training (the FWT reference)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ContinualLMError
from .base import LoRAMethod, Phase


@dataclass
class ReferenceOptions:
    pet: str = "lora"  # lora | full

    def validate(self):
        if self.pet not in ("lora", "full"):
            raise ContinualLMError(f"--*-pet must be 'lora' or 'full', got {self.pet!r}")


class _Reference(LoRAMethod):
    Options = ReferenceOptions

    @property
    def full_finetuning(self) -> bool:  # type: ignore[override]
        return self.options.pet == "full"

    def setup(self, model, backbone):
        if self.options.pet == "full":
            model.requires_grad_(True)
            return
        super().setup(model, backbone)
        self.add_task_lora()
        for bank in self.banks.values():
            bank.lora_A[0].requires_grad_(True)
            bank.lora_B[0].requires_grad_(True)


class MTL(_Reference):
    name = "mtl"
    description = "multi-task learning on all tasks jointly (upper reference; fills only the last matrix row)"

    def schedule(self, num_tasks, eval_all_tasks):
        everything = tuple(range(num_tasks))
        return [Phase(num_tasks - 1, everything, everything)]


class Single(_Reference):
    name = "single"
    description = "each task trained alone from the base model (FWT reference; uses the task id at test)"
    uses_task_id_at_test = True  # task j is evaluated with the model trained on task j

    def schedule(self, num_tasks, eval_all_tasks):
        return [Phase(i, (i,), (i,), reset=True) for i in range(num_tasks)]
