"""Analyses of finished runs: `continual-lm analyze NAME RUN_DIR [options]`.

Registry: name -> "module:function"; the function takes the remaining command-line arguments (a list of
strings, RUN_DIR first) and returns an exit code. Adding an analysis = one module plus one line here.
"""
from __future__ import annotations

import importlib

from ..errors import unknown_choice

ANALYSES: dict[str, str] = {
    "migu-overlap": "continual_lm.analysis.migu_overlap:main",
    "general": "continual_lm.analysis.general:main",
}


def run_analysis(name: str, argv: list[str]) -> int:
    if name not in ANALYSES:
        raise unknown_choice("analysis", name, ANALYSES or ["(none registered)"])
    module_name, _, function = ANALYSES[name].partition(":")
    return getattr(importlib.import_module(module_name), function)(argv)
