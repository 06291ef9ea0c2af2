"""Routing accuracy of the selector methods: how much of an input's selection weight goes to its own task's block.

AM-LoRA (methods/amlora.py) and SAPT (methods/sapt.py) mix per-task blocks with weights they compute from the
input, without a task id. After each task of the stream they record, for the test inputs of every task seen so far,
one weight vector per input over the blocks (``routing_summary``), and write the history into their attention
JSON at the end of the run under ``"routing"``:

    {"description", "blocks": "<what entry k of a weight vector is>", "groups": ["all", ...],
     "samples_per_task": n or null (all test inputs),
     "after_task": [{"after": task name, "tasks": {task name: {group: {"share", "margin", "top1", "n"}}}}, ...]}

for an input of task j with weight vector w over the blocks and ``own`` the index of task j's block:
    share   w[own]                                  (the "routing accuracy" of a single input)
    margin  w[own] - max over k != own of w[k]      (> 0: the own block gets the largest weight)
    top1    1 if argmax w == own else 0
each averaged over the inputs. ``read_routing`` reads that block from a run directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

ROUTING_FILES = ("amlora_attention.json", "sapt_attention.json")


def routing_summary(weights: torch.Tensor, own: int) -> dict[str, float]:
    """Mean share, margin and top-1 rate of the own block ``own`` over the rows of ``weights`` [inputs, blocks]."""
    weights = weights.float()
    if weights.dim() != 2 or not 0 <= own < weights.shape[1]:
        raise ValueError(f"weights must be [inputs, blocks] with block {own} among them, got {tuple(weights.shape)}")
    if weights.shape[0] == 0:
        return {"share": None, "margin": None, "top1": None, "n": 0}
    share = weights[:, own]
    others = torch.cat([weights[:, :own], weights[:, own + 1:]], dim=1)
    margin = share - others.max(dim=1).values if others.shape[1] else share
    top1 = (weights.argmax(dim=1) == own).float()
    return {"share": round(share.mean().item(), 6), "margin": round(margin.mean().item(), 6),
            "top1": round(top1.mean().item(), 6), "n": int(weights.shape[0])}


def read_routing(run_dir: str | Path) -> dict | None:
    """The ``routing`` record of a finished run of a selector method, or None when the run has none."""
    for name in ROUTING_FILES:
        path = Path(run_dir) / name
        if path.exists():
            return json.loads(path.read_text()).get("routing")
    return None


def share_after(routing: dict, after: int, task: str, group: str = "all", key: str = "share") -> float | None:
    """``key`` of ``task``'s inputs in ``group`` after the stream's task number ``after`` (0-based; -1 = the end)."""
    entry = routing["after_task"][after]["tasks"].get(task)
    return None if entry is None else entry[group][key]
