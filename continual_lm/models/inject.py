"""Inject LoRA banks into any Hugging Face model by module-name patterns, without touching modeling code."""
from __future__ import annotations

import re

from torch import nn

from ..errors import ContinualLMError
from .lora_bank import LoRABank


def matches_target(name: str, target: str) -> bool:
    """Whether module ``name`` is meant by ``target``: its last dotted parts, or ``re:REGEX`` matching it whole."""
    if target.startswith("re:"):
        return re.fullmatch(target[3:], name) is not None
    return name == target or name.endswith("." + target)


ALL_LINEAR = "all-linear"  # peft's shorthand (LoraConfig(target_modules="all-linear")), case-insensitive as there


def all_linear_layers(model: nn.Module) -> list[str]:
    """Names of every nn.Linear but the output head (``get_output_embeddings``): what peft's ``all-linear`` targets
    (peft.tuners.tuners_utils._maybe_include_all_linear_layers; peft also takes GPT-2's Conv1D, which LoRABank does
    not wrap)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module is not head]


def inject_lora_banks(model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float) -> dict[str, LoRABank]:
    """Replace every nn.Linear whose name ends with one of ``targets`` (or matches a ``re:`` pattern, or every one
    but the output head for ``all-linear``) by a LoRABank.

    Returns the banks by module name. Banks start with no LoRA; methods add them per task.
    """
    every = set(all_linear_layers(model)) if any(t.lower() == ALL_LINEAR for t in targets) else set()
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (name in every or any(matches_target(name, t) for t in targets))
    ]
    if not chosen:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ContinualLMError(
            f"--lora-targets {','.join(targets)} matched no nn.Linear module of the model; "
            f"expected module-name suffixes such as: {', '.join(linear)}"
        )
    banks = {}
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bank = LoRABank(module, r=r, alpha=alpha, dropout=dropout)
        setattr(parent, child, bank)
        banks[name] = bank
    return banks


def find_lora_banks(model: nn.Module) -> dict[str, LoRABank]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRABank)}
