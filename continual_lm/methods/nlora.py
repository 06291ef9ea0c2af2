"""N-LoRA (Yang et al., COLING 2025, arXiv:2410.10179, "Is Parameter Collision Hindering Continual Learning in
LLMs?"): non-collision low-rank adaptation.

The O-LoRA setup (a new LoRA per task, the earlier ones frozen, all summed at test time: no task id) with an L1
sparsity penalty on the new task's update instead of O-LoRA's orthogonality loss, so that different tasks' updates
occupy different (sparse) parameters:

    L = L_task + lambda1 * sum over adapted projections of ||dW_t||_1,     dW_t = B_t A_t   (paper)

``--nlora-penalty code`` uses the reference code's term instead: ``torch.norm(loranew_A.weight @ loranew_B.weight,
p=1)``, the entry sum of the r x r matrix A_t B_t (defined only where in_features == out_features). O-LoRA's
orthogonality term can be added on top (``--nlora-orthogonal``; 0 as in the reference). See docs/methods/nlora.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ContinualLMError
from .base import LoRAMethod
from .olora import orthogonality_loss
from .option_checks import check_choice, check_fields

PENALTIES = ("delta", "code")


def update_l1(banks, penalty: str = "delta") -> torch.Tensor | None:
    """sum over banks of ||B_t A_t||_1 (``delta``) or ||A_t B_t||_1 (``code``) for the newest LoRA t."""
    terms = []
    for bank in banks:
        if bank.num_loras == 0:
            continue
        A, B = bank.lora_A[-1], bank.lora_B[-1]
        terms.append((B @ A if penalty == "delta" else A @ B).abs().sum())
    return torch.stack(terms).sum() if terms else None


def per_task(value, flag: str, task_index: int, num_tasks: int) -> float:
    if not isinstance(value, list):
        return float(value)
    if len(value) != num_tasks:
        raise ContinualLMError(f"{flag}: got {len(value)} values, expected one per task ({num_tasks})")
    return float(value[task_index])


@dataclass
class NLoRAOptions:
    # weight of the L1 term; a list: one per task. The reference scripts' 0.4 goes with the code's r x r term; with
    # the paper's d_out x d_in term it stops learning on SmolLM2 (bench/nlora_lambda.md), 1e-3 does not
    lambda1: float | list[float] = 1e-3
    penalty: str = "delta"  # delta: ||B_t A_t||_1, the paper's dW_t | code: the reference's ||A_t B_t||_1 (r x r)
    orthogonal: float | list[float] = 0.0  # O-LoRA's orthogonality weight on top (0: N-LoRA's reference code)

    def validate(self) -> None:
        check_fields("nlora", self, lambda1="per task: a number >= 0", orthogonal="per task: a number >= 0")
        check_choice("nlora", self, "penalty", PENALTIES)


class NLoRA(LoRAMethod):
    name = "nlora"
    description = "a new LoRA per task with an L1 penalty on its update against parameter collisions (N-LoRA); summed"
    Options = NLoRAOptions
    composable_with = ("migu", "replay")  # not ewc: nothing trained in task t was trained before t
    uses_task_id_at_train = True  # a new LoRA at each task boundary
    uses_task_id_at_test = False
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "lora"

    def setup(self, model, backbone):
        super().setup(model, backbone)
        for name, flag in (("lambda1", "--nlora-lambda1"), ("orthogonal", "--nlora-orthogonal")):
            per_task(getattr(self.options, name), flag, 0, len(self.tasks))  # a wrong-length list fails now
        if self.options.penalty == "code":
            square = [n for n, b in self.banks.items() if b.in_features != b.out_features]
            if square:
                raise ContinualLMError(
                    f"--nlora-penalty code: the reference's ||A B||_1 needs in_features == out_features, but "
                    f"{square[0]} is {self.banks[square[0]].in_features} -> {self.banks[square[0]].out_features}; "
                    f"use --nlora-penalty delta (the paper's ||B A||_1) or other --lora-targets")
        self.lambda1 = self.orthogonal = 0.0

    def before_task(self, model, task_index, task):
        self.add_task_lora(freeze_previous=True)
        self.lambda1 = per_task(self.options.lambda1, "--nlora-lambda1", task_index, len(self.tasks))
        self.orthogonal = per_task(self.options.orthogonal, "--nlora-orthogonal", task_index, len(self.tasks))

    def extra_loss(self, model, batch, outputs):
        banks = list(self.banks.values())
        terms = []
        if self.lambda1:
            terms.append(self.lambda1 * update_l1(banks, self.options.penalty))
        if self.orthogonal:
            orthogonal = orthogonality_loss(banks)
            if orthogonal is not None:
                terms.append(self.orthogonal * orthogonal)
        return sum(terms) if terms else None
