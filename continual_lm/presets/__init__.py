"""Presets: the hyper-parameters a paper used, per method, benchmark and model family, shipped as data files.

    continual_lm/presets/<preset>/<method>.yaml          one file per registered method name (plugins included)

    paper: "Short citation of the paper the values come from (arXiv id)"
    entries:                      # applied in order; a later matching entry overrides an earlier one
      - match:                    # every key optional; a list means any of; omitted = any
          benchmark: [long]       # standard | long | superni | trace | demo | custom
          model_family: [t5]      # the backbone's config.model_type family (t5, llama, ...)
          order: ["4"]            # the benchmark's canonical order name (aliases such as sapt4 are resolved first)
          base: [olora]           # plugins only: the base method of the composition ("olora+migu")
        set:                      # RunConfig fields (RUN_FIELDS), lora: {r, alpha, dropout, targets}, and
          lr: 1.0e-4              #   options: {...} = this method's own Options fields
          options: {l1: 1.0e-5}
        source:                   # for EVERY value set: section / table / equation or reference-code file
          lr: "§7.3"
          options.l1: "§7.3"
        not_given:                # values the paper does not give, and what is used instead
          warmup_ratio: "not stated; our default 0"

``--preset paper`` (``RunConfig.preset``) resolves, for each part of the method ("olora+migu": olora.yaml, then
migu.yaml), the entries that match the run, and sets every value the user did not give (``RunConfig.is_given``): a
value on the command line or in the YAML always wins, even where it equals the default. An entry with an ``order``
match applies only to a benchmark order, not to an explicit ``--tasks`` list. A ``not_given`` key in a later entry
withdraws a value an earlier entry set (the paper gives none for that case). ``resolve_preset`` returns the new
configuration and a record (what was set, from which source, what the user's values replaced, what the paper does
not give) that the run keeps in ``preset.json`` and results.json.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ..errors import ContinualLMError, unknown_choice
from ..io_utils import load_yaml

PRESET_ROOT = Path(__file__).parent
MATCH_KEYS = ("benchmark", "model_family", "order", "base")
ENTRY_KEYS = ("match", "set", "source", "not_given")
# What a preset may set besides the method's own options: optimisation, the LoRA block and the data sizes of the setup.
RUN_FIELDS = ("lr", "epochs", "batch_size", "grad_accum", "scheduler", "warmup_ratio", "weight_decay",
              "max_grad_norm", "max_input_length", "max_target_length", "max_train_per_task", "max_test_per_task",
              "max_train_per_class", "max_test_per_class")
LORA_FIELDS = ("r", "alpha", "dropout", "targets")
MODEL_FAMILIES = {"mt5": "t5", "umt5": "t5", "longt5": "t5"}  # model_type -> family where they differ


def preset_names() -> list[str]:
    """The presets shipped with the package (folders of YAML files), e.g. ["paper"]."""
    return sorted(p.name for p in PRESET_ROOT.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def preset_methods(preset: str) -> list[str]:
    """The method names that have a file in ``preset``."""
    return sorted(p.stem for p in (PRESET_ROOT / preset).glob("*.yaml"))


def preset_path(preset: str, method: str) -> Path:
    return PRESET_ROOT / preset / f"{method}.yaml"


def model_family(model_type: str | None) -> str | None:
    return MODEL_FAMILIES.get(model_type, model_type) if model_type else None


def model_family_of(config, backbone=None) -> str | None:
    """The family of the run's model from its config only (no weights are loaded): config.model_type."""
    if backbone is not None:
        return model_family(getattr(backbone.model.config, "model_type", None))
    from ..models.backbone import load_model_config

    return model_family(getattr(load_model_config(config.model, trust_remote_code=config.trust_remote_code),
                                "model_type", None))


# ---- reading and checking a file ------------------------------------------------------------------------------
def _flatten(values: dict[str, Any]) -> dict[str, Any]:
    """{"lr": 1, "lora": {"r": 8}, "options": {"eta": 2}} -> {"lr": 1, "lora.r": 8, "options.eta": 2}."""
    flat = {}
    for key, value in (values or {}).items():
        if key in ("lora", "options") and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _check_key(key: str, option_names: set[str], where: str) -> None:
    group, _, name = key.partition(".")
    if key in RUN_FIELDS or (group == "lora" and name in LORA_FIELDS) or (group == "options" and name in option_names):
        return
    if group == "options":
        raise ContinualLMError(f"{where}: {unknown_choice('option', name, option_names or ['(none)'])}")
    if group == "lora":
        raise ContinualLMError(f"{where}: {unknown_choice('lora field', name, LORA_FIELDS)}")
    raise ContinualLMError(f"{where}: {unknown_choice('preset field', key, [*RUN_FIELDS, 'lora', 'options'])}")


def _as_list(value) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def load_preset(preset: str, method: str) -> dict[str, Any]:
    """The parsed and checked file of ``method`` in ``preset`` (ContinualLMError naming the file and the field)."""
    from ..config import RunConfig
    from ..data.benchmarks import BENCHMARKS
    from ..methods.base import build_options
    from ..methods.registry import method_class

    path = preset_path(preset, method)
    if not path.is_file():
        have = ", ".join(preset_methods(preset)) or "none"
        raise ContinualLMError(f"--preset {preset}: no preset file for method {method!r} ({path}); methods with one: "
                               f"{have}")
    try:
        data = load_yaml(path.read_text())  # 1e-4 is a number here too
    except yaml.YAMLError as err:
        raise ContinualLMError(f"preset file {path} is not valid YAML: {err}") from None
    cls = method_class(method)
    option_names = {f.name for f in dataclasses.fields(cls.Options)}
    if not isinstance(data, dict) or set(data) - {"paper", "entries"}:
        raise ContinualLMError(f"preset file {path}: expected the keys 'paper' and 'entries'")
    if not isinstance(data.get("paper"), str) or not data["paper"].strip():
        raise ContinualLMError(f"preset file {path}: 'paper' must name the paper the values come from")
    if not isinstance(data.get("entries"), list):
        raise ContinualLMError(f"preset file {path}: 'entries' must be a list")
    for number, entry in enumerate(data["entries"], 1):
        where = f"preset file {path}, entry {number}"
        if not isinstance(entry, dict) or set(entry) - set(ENTRY_KEYS):
            raise ContinualLMError(f"{where}: expected a mapping with keys among {', '.join(ENTRY_KEYS)}")
        match = entry.get("match") or {}
        for key, value in match.items():
            if key not in MATCH_KEYS:
                raise ContinualLMError(f"{where}: {unknown_choice('match key', key, MATCH_KEYS)}")
            for item in _as_list(value):
                if key == "benchmark" and item not in BENCHMARKS:
                    raise ContinualLMError(f"{where}: {unknown_choice('benchmark', item, BENCHMARKS)}")
                if key == "order" and not any(item in b.orders for b in BENCHMARKS.values()):
                    raise ContinualLMError(f"{where}: order {item!r} is no benchmark's canonical order name")
        if "base" in match and not cls.is_plugin:
            raise ContinualLMError(f"{where}: 'base' can only match in a plugin's file; {method} is a base method")
        values = _flatten(entry.get("set"))
        sources = entry.get("source") or {}
        missing = entry.get("not_given") or {}
        for key in values:
            _check_key(key, option_names, f"{where}, set")
            if not isinstance(sources.get(key), str) or not sources[key].strip():
                raise ContinualLMError(f"{where}: value {key!r} has no source (section, table or reference file)")
        for key in sources:
            if key not in values:
                raise ContinualLMError(f"{where}: source given for {key!r}, which the entry does not set")
        for key, why in missing.items():
            _check_key(key, option_names, f"{where}, not_given")
            if not isinstance(why, str) or not why.strip():
                raise ContinualLMError(f"{where}: not_given {key!r} must say what is used instead")
            if key in values:
                raise ContinualLMError(f"{where}: {key!r} is both set and not_given")
        try:  # the values themselves, checked by the same code that checks a user's
            run = {k: v for k, v in values.items() if "." not in k}
            RunConfig.from_dict({**run, "lora": {k[5:]: v for k, v in values.items() if k.startswith("lora.")}},
                                source=where)
            build_options(cls.Options, method, {method: {k[8:]: v for k, v in values.items()
                                                         if k.startswith("options.")}})
        except (ContinualLMError, TypeError) as err:
            raise ContinualLMError(f"{where}: {err}") from None
    return data


# ---- applying it ----------------------------------------------------------------------------------------------
def _matches(match: dict | None, run: dict[str, str | None]) -> bool:
    return all(run.get(key) is not None and run[key] in _as_list(value) for key, value in (match or {}).items())


def _config_key(method: str, key: str) -> str:
    return f"options.{method}.{key[len('options.'):]}" if key.startswith("options.") else key


def _current(config, key: str):
    group, _, rest = key.partition(".")
    if group == "options":
        method, _, name = rest.partition(".")
        return (config.method_options.get(method) or {}).get(name)
    return getattr(config.lora, rest) if group == "lora" else getattr(config, key)


def _assign(config, key: str, value) -> None:
    group, _, rest = key.partition(".")
    if group == "options":
        method, _, name = rest.partition(".")
        config.method_options.setdefault(method, {})[name] = copy.deepcopy(value)
    elif group == "lora":
        setattr(config.lora, rest, copy.deepcopy(value))
    else:
        setattr(config, key, value)


def resolve_preset(config, family: str | None):
    """(a new RunConfig with the preset's values below the given ones, the record of what was done)."""
    from ..data.benchmarks import canonical_order
    from ..methods.registry import split_method_spec

    if config.preset not in preset_names():
        raise ContinualLMError(f"--preset: {unknown_choice('preset', config.preset, preset_names())}")
    config = copy.deepcopy(config)
    parts = split_method_spec(config.method)
    order = None if config.tasks else canonical_order(config.benchmark, config.order)
    run = {"benchmark": config.benchmark, "model_family": family, "order": order, "base": parts[0]}
    record: dict[str, Any] = {"name": config.preset, "match": {k: v for k, v in run.items() if k != "base"},
                              "papers": {}, "applied": {}, "kept_given": {}, "not_given": {}}
    for part in parts:
        data = load_preset(config.preset, part)
        record["papers"][part] = data["paper"]
        values: dict[str, tuple[Any, str]] = {}
        missing: dict[str, str] = {}
        for entry in data["entries"]:
            if not _matches(entry.get("match"), run):
                continue
            for key, value in _flatten(entry.get("set")).items():
                values[key] = (value, entry["source"][key])
                missing.pop(key, None)
            for key, why in (entry.get("not_given") or {}).items():
                missing[key] = why
                values.pop(key, None)
        for key, (value, source) in values.items():
            target = _config_key(part, key)
            if config.is_given(target):
                record["kept_given"][target] = {"preset": value, "used": _current(config, target), "source": source}
                continue
            _assign(config, target, value)
            record["kept_given"].pop(target, None)
            record["applied"][target] = {"value": value, "source": source, "file": f"{config.preset}/{part}.yaml"}
        if missing:
            record["not_given"][part] = {_config_key(part, k): why for k, why in missing.items()}
    config.validate()
    return config, record
