"""Which runs are one experiment, and how a report names them.

A run's configuration is its identity (``train/run_record.identity``: every resolved option that decides what the
run computes: benchmark, order, model, method and all its options, lr, epochs, LoRA, data sizes, ...) plus its global
batch. results.json records it under ``"config"``; for runs written before that, ``load_runs`` reads it from the
run's run.json (or config.yaml) beside results.json, and a bare results dict falls back to what it says itself
(benchmark, order, method, model, global batch). An *experiment* is a configuration without the seed: only its
runs are averaged. A *configuration group* leaves out the task order too: the papers' "Avg" over orders.

Row labels are the method's name plus every option that differs among the shown runs of that method
(``seqlora (lr=0.001)``), so that two configurations of one method never look alike.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import ContinualLMError

SEED, ORDER = "seed", "order"
GLOBAL_BATCH = "global_batch"
FALLBACK_KEYS = ("benchmark", "order", "method", "model")  # what results.json itself says of its configuration
COLUMN_KEYS = ("benchmark", "order", "model", "seed")  # shown in their own columns, so left out of labels


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"lora": {"r": 8}, "method_options": {"migu": {"threshold": 0.7}}} -> {"lora.r": 8,
    "method_options.migu.threshold": 0.7}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # an empty mapping (a method without options) adds nothing
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_config(results: dict) -> dict[str, Any]:
    """The flattened configuration of a run (see the module docstring), seed and order included."""
    config = results.get("config")
    if isinstance(config, dict):
        flat = flatten(config)
    else:
        flat = {key: results.get(key) for key in FALLBACK_KEYS}
        flat[SEED] = results.get(SEED)
    flat[ORDER] = results.get(ORDER, flat.get(ORDER))  # the order the stream resolved to
    batch = results.get("batch") or {}
    if batch.get("global") is not None:
        flat[GLOBAL_BATCH] = batch["global"]
    return flat


def _key(config: dict[str, Any], without: Sequence[str]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in without}, sort_keys=True, default=str)


def experiment_key(results: dict) -> str:
    """Equal for runs of one experiment: the same configuration but for the seed."""
    return _key(run_config(results), (SEED,))


def configuration_key(results: dict) -> str:
    """Equal for runs that differ at most in seed and task order (averaged over orders as "Avg")."""
    return _key(run_config(results), (SEED, ORDER))


def _short(key: str) -> str:
    return key.removeprefix("method_options.")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def varying_options(configs: Sequence[dict[str, Any]], hide: Sequence[str] = COLUMN_KEYS) -> list[str]:
    """The configuration keys whose values differ among ``configs`` (absent counts as a value), in a stable order."""
    keys = sorted({k for c in configs for k in c} - set(hide))
    missing = object()
    return [k for k in keys if len({_value(c.get(k, missing)) for c in configs}) > 1]


def labels(results_list: Sequence[dict], hide: Sequence[str] = COLUMN_KEYS) -> list[str]:
    """One label per run: its method, plus ``key=value`` for each option that differs among the runs of that method
    in ``results_list`` (keys in ``hide`` have columns of their own)."""
    configs = [run_config(r) for r in results_list]
    by_method: dict[str, list[dict]] = {}
    for r, c in zip(results_list, configs):
        by_method.setdefault(str(r.get("method")), []).append(c)
    varying = {m: varying_options(cs, hide) for m, cs in by_method.items()}
    out = []
    for r, c in zip(results_list, configs):
        method = str(r.get("method") or "?")
        extra = [f"{_short(k)}={_value(c.get(k, '(absent)'))}" for k in varying[str(r.get("method"))]]
        out.append(f"{method} ({', '.join(extra)})" if extra else method)
    return out


def results_problem(results) -> str | None:
    """What makes ``results`` unusable as a results.json (docs/metrics.md has the contract), or None."""
    if not isinstance(results, dict):
        return f"expected a JSON object, got {type(results).__name__}"
    matrix = results.get("matrix")
    if not isinstance(matrix, list) or not matrix or not all(isinstance(row, list) for row in matrix):
        return "'matrix' must be a non-empty list of rows"
    if any(len(row) != len(matrix) for row in matrix) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for row in matrix for v in row):
        return "'matrix' must be square, of numbers or null"
    tasks = results.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or len(tasks) != len(matrix)
                              or not all(isinstance(t, str) for t in tasks)):
        return "'tasks' must list one name per matrix row"
    for key, kind in (("metrics", dict), ("method", str), ("timing", dict), ("config", dict), ("parameters", dict)):
        if key in results and results[key] is not None and not isinstance(results[key], kind):
            return f"'{key}' must be a {'mapping' if kind is dict else 'string'}"
    return None


def load_runs(paths: Sequence[str | Path]) -> list[dict]:
    """The results.json of every run under ``paths`` (run directories, results.json files, or parents of runs),
    each with its ``"config"`` (read from run.json or config.yaml beside it when results.json predates that key) and
    ``"run_dir"`` (the folder holding it; in memory only) filled in. Unusable files are refused by name."""
    results = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise ContinualLMError(f"{given}: no such file or directory (expected a run directory, a results.json "
                                   f"or a parent of runs)")
        files = [path] if path.is_file() else sorted(path.glob("**/results.json"))
        if not files:
            raise ContinualLMError(f"{given}: no results.json found (expected a run directory or a parent of runs)")
        for file in files:
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ContinualLMError(f"{file} is not valid JSON: {err}") from None
            problem = results_problem(data)
            if problem:
                raise ContinualLMError(f"{file} is not a continual_lm results.json: {problem}")
            if not isinstance(data.get("config"), dict):
                recorded = _recorded_identity(file.parent)
                if recorded is not None:
                    data["config"] = recorded
            data["run_dir"] = str(file.parent)
            results.append(data)
    return results


def _recorded_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity of the run in ``run_dir`` from its run.json, else its config.yaml (with the method options'
    defaults filled in, as a run of this version records them); None when neither is usable (the run is then grouped
    by what its results.json says)."""
    from ..config import RunConfig
    from ..train.run_record import identity, resolve_config

    record = run_dir / "run.json"
    try:
        config = json.loads(record.read_text(encoding="utf-8")).get("config")
        if isinstance(config, dict):
            return config
    except (OSError, ValueError, AttributeError):
        pass
    try:
        config = RunConfig.from_yaml(run_dir / "config.yaml")
    except (OSError, ContinualLMError, TypeError, ValueError):
        return None
    try:
        return identity(resolve_config(config))
    except (ContinualLMError, TypeError, ValueError):  # e.g. a method this version no longer has
        return identity(config)
