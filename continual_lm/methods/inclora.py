"""IncLoRA: a new LoRA per task; earlier LoRAs frozen; all LoRAs summed (no task id at test time)."""
from .base import LoRAMethod


class IncLoRA(LoRAMethod):
    name = "inclora"
    description = "a new LoRA per task, earlier ones frozen, outputs summed"
    composable_with = ("migu", "replay")  # not ewc: nothing trained in task t was trained before t
    uses_task_id_at_train = True  # a new LoRA at each task boundary
    uses_task_id_at_test = False  # the LoRAs are summed for every input
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "lora"

    def before_task(self, model, task_index, task):
        self.add_task_lora(freeze_previous=True)
