"""MoELoRA as a continual-learning baseline: one LoRA expert per task, mixed by a learned token-level router.

In every adapted projection (a LoRABank) a router scores the experts from the projection's input token x:

    g(x) = softmax_i( w_i . x + b_i )   over the experts that exist so far        (no task id, at train or test)
    h    = W0 x + (alpha/r) * sum_i g_i(x) B_i A_i x

Task t adds expert t (a new LoRA) and router row t (w_t = 0, b_t = 0). While training task t the new expert and
every router row train; the earlier experts stay frozen. Each router row is its own parameter
(``...mixer.weight.<i>``, ``...mixer.bias.<i>``), so growing the router is deterministic and checkpoint names
stay stable. See docs/methods/moelora.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LoRAMethod


class TokenRouter(nn.Module):
    """Linear(in_features -> experts) + softmax over the experts, grown one output row per expert."""

    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = in_features
        self.weight = nn.ParameterList()  # row i: [1, in_features]
        self.bias = nn.ParameterList()  # row i: [1]

    def add_expert(self, device, dtype) -> None:
        self.weight.append(nn.Parameter(torch.zeros(1, self.in_features, device=device, dtype=dtype)))
        self.bias.append(nn.Parameter(torch.zeros(1, device=device, dtype=dtype)))

    def forward(self, bank, x: torch.Tensor, per_lora: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x.to(self.weight[0].dtype), torch.cat(list(self.weight)), torch.cat(list(self.bias)))
        return logits.float().softmax(dim=-1)  # [..., experts], sums to 1 for every token


class MoELoRA(LoRAMethod):
    name = "moelora"
    description = "a LoRA expert per task mixed by a learned token-level router (MoELoRA); no task id"
    composable_with = ("replay",)
    uses_task_id_at_train = True  # a new expert at each task boundary
    uses_task_id_at_test = False  # the router mixes the experts per token
    uses_replay = False
    uses_pseudo_samples = False
    pet_kind = "lora"
    supports_corpus_tasks = False  # a router over per-task experts (docs/continual_pretraining.md)

    def setup(self, model, backbone):
        super().setup(model, backbone)
        for bank in self.banks.values():
            bank.mixer = TokenRouter(bank.in_features)

    def before_task(self, model, task_index, task):
        self.add_task_lora(freeze_previous=True)
        for bank in self.banks.values():
            bank.mixer.add_expert(bank.base.weight.device, bank.base.weight.dtype)
            bank.mixer.requires_grad_(True)
