"""LoRABank: one frozen nn.Linear plus a growing stack of per-task LoRAs, evaluated with batched matmuls.

For T LoRAs of rank r the bank computes

    h = W0 x + scaling * B_cat (g * (A_cat x))

where A_cat stacks the A_i row-wise ([T*r, in]) and B_cat the B_i column-wise ([out, T*r]): one matmul for all
T down-projections and one for all up-projections, however many tasks there are. ``g`` are optional per-LoRA
weights produced by the bank's *mixer* (an nn.Module set by a method):

    mixer(bank, x, xa) -> weights broadcastable to [..., T]   with xa = A_i x per LoRA, shape [..., T, r]

No mixer means a plain sum (SeqLoRA with T=1, IncLoRA, O-LoRA). Token-level mixers (AM-LoRA, MoELoRA) return
[..., T]; instance-level mixers (SAPT) return [batch, 1, T]. Because W_i^T (B_i A_i x) = (B_i^T W_i) . (A_i x),
a selector that scores the LoRA outputs never needs the T full-width outputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRABank(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 32.0, dropout: float = 0.1):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        self.base = base
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList()  # each [r, in_features]
        self.lora_B = nn.ParameterList()  # each [out_features, r]
        self.mixer: nn.Module | None = None
        self.record_weights = False  # a mixer may keep its last output for analyses (AM-LoRA's selector statistics)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def num_loras(self) -> int:
        return len(self.lora_A)

    def add_lora(self) -> int:
        """Append a new LoRA (A Kaiming-uniform as in peft, B zero so it starts as a no-op); return its index."""
        weight = self.base.weight
        A = torch.empty(self.r, self.in_features, device=weight.device, dtype=weight.dtype)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        B = torch.zeros(self.out_features, self.r, device=weight.device, dtype=weight.dtype)
        self.lora_A.append(nn.Parameter(A))
        self.lora_B.append(nn.Parameter(B))
        return self.num_loras - 1

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_cat [T*r, in], B_cat [out, T*r]); no copy for a single LoRA."""
        if self.num_loras == 1:
            return self.lora_A[0], self.lora_B[0]
        return torch.cat(list(self.lora_A), dim=0), torch.cat(list(self.lora_B), dim=1)

    def delta_weight(self, index: int | None = None) -> torch.Tensor:
        """scaling * B A for one LoRA, or for the sum of all (what a merge adds to W0)."""
        if index is None:
            A, B = self.stacked()
        else:
            A, B = self.lora_A[index], self.lora_B[index]
        return (B @ A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.num_loras == 0:
            return out
        A, B = self.stacked()
        xa = F.linear(self.dropout(x).to(A.dtype), A)
        if self.mixer is not None:
            per_lora = xa.unflatten(-1, (self.num_loras, self.r))
            weights = self.mixer(self, x, per_lora)
            xa = (per_lora * weights.unsqueeze(-1).to(per_lora.dtype)).flatten(-2)
        return out + (F.linear(xa, B) * self.scaling).to(out.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, loras={self.num_loras}"
