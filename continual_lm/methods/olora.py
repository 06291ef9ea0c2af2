"""O-LoRA (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning").

A new LoRA per task, earlier LoRAs frozen, all summed at inference (no task id). Training task t adds

    lambda1 * sum_{i<t} sum_{j,k} |(A_i A_t^T)_{jk}|        over every adapted projection (orthogonality)
  + lambda2 * (||A_t||_F + ||B_t||_F)                       over every adapted projection

to the task loss. The second term follows the reference code (cmnfriend/O-LoRA, ``src/uie_trainer_lora.py``):
``torch.norm(param, p=2)`` summed over the new LoRA's A and B, i.e. Frobenius norms, not squared.
lambda1/lambda2 are a float, or one float per task of the stream. See docs/methods/olora.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ContinualLMError
from .option_checks import check_fields
from .base import LoRAMethod


def orthogonality_loss(banks) -> torch.Tensor | None:
    """sum over banks and earlier LoRAs i of sum |A_i A_t^T| with t the newest LoRA; None with fewer than 2 LoRAs."""
    terms = []
    for bank in banks:
        if bank.num_loras < 2:
            continue
        earlier = torch.cat(list(bank.lora_A)[:-1], dim=0)  # [(t-1)*r, in]: the sum over i in one matmul
        terms.append((earlier @ bank.lora_A[-1].T).abs().sum())
    return torch.stack(terms).sum() if terms else None


def new_lora_norm(banks) -> torch.Tensor | None:
    """sum over banks of ||A_t||_F + ||B_t||_F for the newest LoRA (as the reference code's l2 term)."""
    terms = [torch.linalg.norm(p) for bank in banks if bank.num_loras for p in (bank.lora_A[-1], bank.lora_B[-1])]
    return torch.stack(terms).sum() if terms else None


@dataclass
class OLoRAOptions:
    lambda1: float | list[float] = 0.5  # orthogonality weight; a list gives one value per task
    lambda2: float | list[float] = 0.0  # weight of the new LoRA's norm; a list gives one value per task

    def validate(self):
        check_fields("olora", self, lambda1="per task: a number >= 0", lambda2="per task: a number >= 0")

    def for_task(self, name: str, task_index: int, num_tasks: int) -> float:
        value = getattr(self, name)
        if not isinstance(value, list):
            return float(value)
        if len(value) != num_tasks:
            raise ContinualLMError(f"--olora-{name}: got {len(value)} values, expected one per task ({num_tasks})")
        return float(value[task_index])


class OLoRA(LoRAMethod):
    name = "olora"
    description = "a new LoRA per task, orthogonal to the earlier ones (O-LoRA); outputs summed"
    Options = OLoRAOptions
    composable_with = ("migu", "replay")
    uses_task_id_at_train = True  # a new LoRA at each task boundary
    uses_task_id_at_test = False  # the LoRAs are summed for every input
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "lora"

    def setup(self, model, backbone):
        super().setup(model, backbone)
        for name in ("lambda1", "lambda2"):  # a wrong-length list fails now, not after hours of training
            self.options.for_task(name, 0, len(self.tasks))
        self.lambda1 = self.lambda2 = 0.0

    def before_task(self, model, task_index, task):
        self.add_task_lora(freeze_previous=True)
        self.lambda1 = self.options.for_task("lambda1", task_index, len(self.tasks))
        self.lambda2 = self.options.for_task("lambda2", task_index, len(self.tasks))

    def extra_loss(self, model, batch, outputs):
        banks = list(self.banks.values())
        terms = []
        if self.lambda1:
            orthogonal = orthogonality_loss(banks)
            if orthogonal is not None:
                terms.append(self.lambda1 * orthogonal)
        if self.lambda2:
            terms.append(self.lambda2 * new_lora_norm(banks))
        return sum(terms) if terms else None
