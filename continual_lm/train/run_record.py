"""What a run records when it starts (RUN_DIR/run.json), so that a resume or a reuse never mixes two runs.

    {"continual_lm_run": 1, "created": ..., "continual_lm": version,
     "config": {...identity...}, "config_sha256": ..., "global_batch": batch_size x grad_accum x processes,
     "data": {"tasks": {name: sha256}, "unseen": {name: sha256}, "stream_file": sha256 | null}, "data_sha256": ...,
     "stream_sha256": sha256 of stream.json (the stream's task definitions, data/stream.py)}

The identity of a configuration is every resolved option that decides what the run computes. Left out are how it
runs (``RUNTIME``: progress bars, trackers, checkpoint pruning, the output directory, trust in remote code, CPU
threads), the per-process batch (``PER_PROCESS``; the global batch is recorded instead, so that a run resumes on
another number of processes) and where its inputs lie (``LOCATIONS``: data, stream file, lm-eval tasks, the
single-task reference run), whose content the data hashes cover instead, so that a run directory or its data can be
moved. A task's hash covers what the run reads of it (name, kind, metric, instruction, template, labels, every
train and test example after subsampling), whatever reader produced it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ..config import EARLIER_RUNS, RunConfig
from ..errors import ContinualLMError
from ..io_utils import sha256_file

RECORD_FORMAT = 1
RUNTIME = ("output_dir", "progress", "report_to", "tracker_project", "tracker_run_name", "keep_checkpoints",
           "trust_remote_code", "threads")
LOCATIONS = ("data_dir", "stream_file", "general_task_dir", "single_task_from")
# Per process: the global batch (batch_size x grad_accum x processes) is what the run computes with; it is recorded
# and checked instead, so that a run can be resumed on another number of processes.
PER_PROCESS = ("batch_size", "grad_accum")


def _plain(value: Any) -> Any:
    """JSON-equal form of a configuration value (tuples -> lists, dataclasses -> dicts)."""
    return json.loads(json.dumps(value, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o)
                                 else str(o)))


def identity(config: RunConfig) -> dict[str, Any]:
    data = _plain(config.to_dict())
    return {k: v for k, v in data.items() if k not in RUNTIME + LOCATIONS + PER_PROCESS}


def sha256_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(obj), sort_keys=True).encode()).hexdigest()


def flag(dotted: str) -> str:
    """The command-line flag of a configuration key: "lora.r" -> --lora-r, "method_options.replay.fraction" ->
    --replay-fraction."""
    parts = dotted.split(".")
    if parts[0] == "method_options" and len(parts) == 3:
        return f"--{parts[1]}-{parts[2].replace('_', '-')}"
    return "--" + "-".join(p.replace("_", "-") for p in parts if p != "method_options")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"lora": {"r": 8}, "method_options": {"replay": {"fraction": 0.02}}} -> {"lora.r": 8,
    "method_options.replay.fraction": 0.02}; other values stay whole."""
    flat = {}
    for key, value in data.items():
        nested = key in ("lora", "method_options") if not prefix else prefix.startswith("method_options")
        if nested and isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(flag, value in ``before``, value in ``after``) for every option that differs (missing = absent)."""
    a, b = _flatten(before), _flatten(after)
    missing = "(absent)"
    return [(flag(key), a.get(key, missing), b.get(key, missing)) for key in sorted(set(a) | set(b))
            if a.get(key, missing) != b.get(key, missing)]


def describe(changes: list[tuple[str, Any, Any]], first: str, second: str) -> str:
    return "; ".join(f"{name}: {old!r} {first}, {new!r} {second}" for name, old, new in changes)


def task_sha256(task) -> str:
    """sha256 of what a run reads of a task (not where it was read from)."""
    extra = {k: v for k, v in task.extra.items() if not k.endswith("_file")}
    return sha256_of({"name": task.name, "kind": task.kind, "metric": task.metric, "instruction": task.instruction,
                      "template": task.template, "labels": task.labels, "train": task.train, "test": task.test,
                      "extra": extra})


def data_fingerprint(stream, config: RunConfig) -> dict[str, Any]:
    stream_file = config.stream_file if config.benchmark == "custom" else None
    return {"tasks": {t.name: task_sha256(t) for t in stream.tasks},
            "unseen": {t.name: task_sha256(t) for t in stream.unseen},
            "stream_file": sha256_file(stream_file) if stream_file and Path(stream_file).is_file() else None}


def data_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    found = []
    for group, label in (("tasks", "task"), ("unseen", "unseen task")):
        before, now = recorded.get(group) or {}, current.get(group) or {}
        if list(before) != list(now):
            found.append(f"the {label}s were {', '.join(before) or 'none'}, now {', '.join(now) or 'none'}")
            continue
        found += [f"{label} {name}: its examples, instruction or labels changed" for name in now
                  if before[name] != now[name]]
    if recorded.get("stream_file") != current.get("stream_file"):
        found.append("the stream file's content changed")
    return found


def global_batch(config: RunConfig, processes: int) -> int:
    return config.batch_size * config.grad_accum * processes


def new_record(config: RunConfig, fingerprint: dict[str, Any], processes: int,
               stream: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.json; ``stream``: the stream definition the run keeps (stream.json), whose sha256 it records."""
    from ..version import __version__

    ident = identity(config)
    record = {"continual_lm_run": RECORD_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "continual_lm": __version__, "config": ident, "config_sha256": sha256_of(ident),
              "global_batch": global_batch(config, processes), "data": fingerprint,
              "data_sha256": sha256_of(fingerprint)}
    if stream is not None:
        record["stream_sha256"] = sha256_of(stream)
    return record


def recorded_identity(record: dict[str, Any], where: Path) -> dict[str, Any]:
    """The identity run.json holds, with the defaults of options added since it was written (``EARLIER_RUNS``:
    the behaviour of runs before an option whose default changed it)."""
    try:
        return identity(RunConfig.from_dict({**EARLIER_RUNS, **record["config"]}, source=str(where)))
    except TypeError as err:
        raise ContinualLMError(f"{where}: its 'config' is malformed ({err})") from None


def resolve_config(config: RunConfig, output_dir: Path | None = None) -> RunConfig:
    """A copy of ``config`` with every value the run will use filled in: the method's default learning rate and
    the options of each method part, the benchmark's first order, paths made absolute (so that the run can be
    resumed from any working directory), the output directory. Validates the method and its options."""
    from ..data.benchmarks import list_benchmarks
    from ..methods.base import build_method, resolved_options
    from ..models.backbone import MODEL_ALIASES

    config = RunConfig.from_dict(config.to_dict())
    method = build_method(config)
    if config.lr is None:
        config.lr = method.default_lr()
    config.method_options = resolved_options(method)  # every option's value, defaults included
    if config.benchmark != "custom" and config.order is None and not config.tasks:
        orders = list_benchmarks().get(config.benchmark)
        config.order = orders[0] if orders else None
    for name in LOCATIONS:
        if getattr(config, name):
            setattr(config, name, str(Path(getattr(config, name)).expanduser().absolute()))
    model = Path(config.model).expanduser()
    if config.model.strip().lower() not in MODEL_ALIASES and model.exists():  # a local folder or .gguf file
        config.model = str(model.absolute())
    if output_dir is not None:
        config.output_dir = str(output_dir)
    return RunConfig.from_dict(config.to_dict())
