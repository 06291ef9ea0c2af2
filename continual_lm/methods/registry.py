"""The method registry: name -> "module:Class". Adding a method = one file in methods/ plus one line here.

Methods of your own need no edit here: decorate the class with ``@register_method`` (methods/base.py; a ``Method``
subclass with a ``name``, docs/api.md), or publish it from a package under the entry-point group
``continual_lm.methods`` (``name = "module:Class"``), which is read the first time a name is not found.
"""
from __future__ import annotations

import importlib

from ..errors import ContinualLMError, unknown_choice

ENTRY_POINT_GROUP = "continual_lm.methods"

METHODS: dict[str, str | type] = {
    "seqft": "continual_lm.methods.seqft:SeqFT",
    "seqlora": "continual_lm.methods.seqlora:SeqLoRA",
    "inclora": "continual_lm.methods.inclora:IncLoRA",
    "mtl": "continual_lm.methods.reference:MTL",
    "single": "continual_lm.methods.reference:Single",
    "olora": "continual_lm.methods.olora:OLoRA",
    "replay": "continual_lm.methods.replay:Replay",
    "ewc": "continual_lm.methods.ewc:EWC",
    "moelora": "continual_lm.methods.moelora:MoELoRA",
    "amlora": "continual_lm.methods.amlora:AMLoRA",
    "migu": "continual_lm.methods.migu:MIGU",
    "sapt-lora": "continual_lm.methods.sapt:SAPTLoRA",
    "sapt-prompt": "continual_lm.methods.sapt:SAPTPrompt",
    "lfpt5": "continual_lm.methods.lfpt5:LFPT5",
    "epi": "continual_lm.methods.epi:EPI",
    "l2p": "continual_lm.methods.l2p:L2P",
    "progprompt": "continual_lm.methods.progprompt:ProgPrompt",
    "osf": "continual_lm.methods.osf:OSF",
    "merge-ta": "continual_lm.methods.merging:TaskArithmetic",
    "merge-ties": "continual_lm.methods.merging:TIES",
    "merge-dare": "continual_lm.methods.merging:DARE",
    "magmax": "continual_lm.methods.merging:MagMax",
    "inflora": "continual_lm.methods.inflora:InfLoRA",
    "gainlora": "continual_lm.methods.gainlora:GainLoRA",
    "nlora": "continual_lm.methods.nlora:NLoRA",
}


def _load_entry_points() -> None:
    """Add the methods that installed packages publish under ENTRY_POINT_GROUP (names already taken are kept)."""
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        METHODS.setdefault(point.name, point.value)


def method_class(name: str):
    if name not in METHODS:
        _load_entry_points()
    if name not in METHODS:
        raise unknown_choice("method", name, METHODS)
    entry = METHODS[name]
    if isinstance(entry, type):  # registered from Python (register_method)
        return entry
    module_name, _, class_name = entry.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def split_method_spec(spec: str) -> list[str]:
    """"seqlora+replay+migu" -> ["seqlora", "replay", "migu"], validated: one base method first, then plugins."""
    parts = [p.strip() for p in spec.split("+")]
    if not spec or any(not p for p in parts):
        raise ContinualLMError(f"--method {spec!r}: expected NAME or BASE+PLUGIN[+PLUGIN], e.g. 'inclora+migu'")
    classes = [method_class(p) for p in parts]
    if classes[0].is_plugin:
        raise ContinualLMError(f"--method {spec!r}: {parts[0]!r} is a plugin; put a base method first, e.g. 'seqlora+{parts[0]}'")
    for part, cls in zip(parts[1:], classes[1:]):
        if not cls.is_plugin:
            raise ContinualLMError(f"--method {spec!r}: {part!r} is a base method, only plugins can follow '+'")
        if part not in classes[0].composable_with and cls.name not in classes[0].composable_with:
            allowed = ", ".join(classes[0].composable_with) or "none"
            raise ContinualLMError(f"--method {spec!r}: {parts[0]} cannot be combined with {part} (it combines with: {allowed})")
    if len(set(parts)) != len(parts):
        raise ContinualLMError(f"--method {spec!r}: a method appears twice")
    return parts
