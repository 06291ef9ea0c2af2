"""Markdown table primitives and the protocol column shared by every report table."""
from __future__ import annotations

from typing import Sequence

DASH = "–"  # shown for a missing value (null in results.json)
# The declared protocol (results.json "protocol", methods/base.py): flag -> key, in the order shown.
PROTOCOL_LETTERS = (("R", "replay"), ("P", "pseudo_samples"), ("Ttr", "task_id_at_train"), ("Tte", "task_id_at_test"),
                    ("N", "task_names_in_prompts"))
PROTOCOL_LEGEND = ("R = replays stored real examples of earlier tasks, P = trains on generated pseudo samples of "
                   "earlier tasks, Ttr = uses task identity in training (per-task blocks, state or markers), "
                   "Tte = is given the task id at test, N = task names in the prompts; – = none of these, "
                   "? = not recorded (an older run)")


def protocol_flags(protocol: dict | None) -> str:
    """The compact protocol column of a run ("R Ttr", "–" for none, "?" when results.json does not record it)."""
    if protocol is None:
        return "?"
    return " ".join(flag for flag, key in PROTOCOL_LETTERS if protocol.get(key)) or DASH


def fmt(v, decimals: int) -> str:
    return DASH if v is None else f"{v:.{decimals}f}"


def cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return DASH if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align_right_from: int = 1) -> str:
    sep = ["---" if k < align_right_from else "---:" for k in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
