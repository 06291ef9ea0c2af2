"""One place that turns a configuration and an output directory into a running (or reused) run.

``prepare_run`` decides what to do with the directory (start, resume, replace, reuse) and checks everything that
can be checked (configuration, method and its options, data, model, LoRA targets, the directory's contents, the
recorded configuration and data of an earlier run) while writing nothing. ``PreparedRun.start`` then takes the
directory's lock, checks the directory again under it, and only then writes (clears a replaced run, config.yaml,
run.json) and runs. The CLI (run, sweeps), the demo, bench/reproduce.py and the Python API all go through it.

    prepare_run(config, output_dir=D)                  D absent or empty: start; a run there: error (resume/overwrite)
    prepare_run(config, output_dir=D, overwrite=True)  a run there is replaced; anything else there is refused
    prepare_run(config, output_dir=D, resume=True)     continue the run in D; ``config`` (or the recorded one when
                                                       None) must have the recorded identity and data
    prepare_run(config, output_dir=D, reuse=True)      a finished run of the same configuration is reused, an
                                                       unfinished one resumed, none started; another is refused
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import EARLIER_RUNS, RunConfig, read_yaml_mapping
from ..errors import ContinualLMError
from ..io_utils import atomic_write_yaml
from .checkpoint import RunDir
from .run_record import (LOCATIONS, data_differences, data_fingerprint, describe, differences,
                         global_batch, identity, new_record, recorded_identity)


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


def recorded_config(path: Path) -> tuple[RunConfig, dict[str, Any] | None]:
    """The configuration of the run in ``path`` (config.yaml) and its run.json (None for runs of earlier versions);
    config.yaml must still say what the run started with."""
    run_dir = RunDir(path)
    if not run_dir.config_path.exists():
        raise ContinualLMError(f"{path}: no config.yaml there; it is not a continual_lm run directory (or it was "
                               f"killed before it started: run it again without --resume)")
    config = RunConfig.from_dict({**EARLIER_RUNS, **read_yaml_mapping(run_dir.config_path)},
                                 source=str(run_dir.config_path))
    record = run_dir.read_record()
    if record is not None:
        changes = differences(recorded_identity(record, run_dir.record_path), identity(resolve_config(config)))
        if changes:
            raise ContinualLMError(f"{run_dir.config_path} differs from the configuration the run started with "
                                   f"({run_dir.record_path}): {describe(changes, 'at the start', 'now')}. Restore "
                                   f"it, or start a new run in another directory")
    return config, record


def resume_config(path: str | Path, given: dict[str, Any]) -> RunConfig:
    """The configuration for ``continual-lm run --resume PATH`` with the options the command line gave: options
    that change what the run computes are refused unless equal to the recorded ones; runtime options (progress,
    trackers, checkpoint pruning, --trust-remote-code) and locations of the same data apply."""
    recorded, _ = recorded_config(Path(path))
    base = recorded.to_dict()
    base.update(trust_remote_code=False, progress=True)  # only the current command decides these
    if given.get("method", base["method"]) != base["method"]:  # another method: its options, not the recorded ones,
        base["method_options"] = {}  # so that the difference is reported as what it is (--method)
    merged = dict(base)
    for key, value in given.items():
        if key in ("lora", "method_options"):
            merged[key] = _deep_merge(base[key], value)
        else:
            merged[key] = value
    config = RunConfig.from_dict(merged, source="command line")
    before = {k: v for k, v in identity(resolve_config(recorded)).items()}
    after = identity(resolve_config(config))
    changes = differences(before, after)
    if changes:
        raise ContinualLMError(f"--resume {path}: {describe(changes, 'recorded', 'given')}. A resumed run continues "
                               f"with its recorded configuration: drop these options, or start a new run in another "
                               f"--output-dir")
    return config


def _deep_merge(base: dict, given: dict) -> dict:
    merged = dict(base)
    for key, value in given.items():
        merged[key] = _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


@dataclass
class PreparedRun:
    """A run checked and built, nothing written yet. ``action``: start | resume | replace | reuse."""

    path: Path
    config: RunConfig
    action: str
    runner: Any = None  # train.loop.ContinualRunner (None for reuse)
    results: dict[str, Any] | None = None  # reuse: the finished run's results.json
    record: dict[str, Any] | None = None  # the run.json to write (start/replace, or a run of an earlier version)
    preset: dict[str, Any] | None = None  # start/replace with --preset: what it set (preset.json)

    def start(self) -> dict[str, Any]:
        """Lock the directory, check it again under the lock, write config.yaml and run.json, run; the results."""
        if self.action == "reuse":
            return self.results
        from .loop import _cpu_processes

        from accelerate import PartialState

        state = PartialState(cpu=_cpu_processes())
        run_dir = self.runner.run_dir
        state.wait_for_everyone()  # every process has checked the directory before one of them writes to it
        if state.is_main_process:
            run_dir.acquire_lock()
            try:
                self._write_under_lock(run_dir)
            except BaseException:
                run_dir.release_lock()
                raise
        state.wait_for_everyone()
        if self.config.report_to != "none":
            flat = {k: v for k, v in self.config.to_dict().items() if isinstance(v, (int, float, str, bool))}
            self.runner.accelerator.init_trackers("tracking", config=flat)
        return self.runner.run()

    def _write_under_lock(self, run_dir: RunDir) -> None:
        found = run_dir.contents()
        if self.action == "start" and found.kind != "empty":
            raise ContinualLMError(f"output directory {self.path} was written by another run while this one was "
                                   f"starting; nothing of it was changed. Pass --resume {self.path} to continue "
                                   f"that run, or choose another --output-dir")
        if self.action == "replace":
            if found.kind == "run" and not found.foreign:
                run_dir.clear()
            elif found.kind != "empty":
                raise ContinualLMError(f"output directory {self.path} changed while this run was starting; "
                                       f"nothing was deleted")
        if self.action == "resume" and found.kind != "run":
            raise ContinualLMError(f"{self.path} is no longer a run directory; nothing was written")
        run_dir.remove_stale_temporaries()
        # config.yaml first (a directory with our config.yaml is a run that can be resumed or replaced), then
        # run.json; a resume rewrites config.yaml with its runtime options and data locations (same identity)
        atomic_write_yaml(run_dir.config_path, self.config.to_dict())
        if self.record is not None:
            run_dir.write_record(self.record)
        if self.preset is not None:
            run_dir.write_preset(self.preset)


def prepare_run(config: RunConfig | None = None, *, output_dir: str | Path | None = None, resume: bool = False,
                overwrite: bool = False, reuse: bool = False, backbone=None,
                how_to_replace: str = "--overwrite") -> PreparedRun:
    """Check and build a run without writing anything (see the module docstring)."""
    from .loop import build_runner, default_output_dir, load_stream_for

    if sum((resume, overwrite, reuse)) > 1:
        raise ContinualLMError("--resume, --overwrite and reuse exclude each other")
    if config is None and not resume:
        raise ContinualLMError("a configuration is needed unless resuming")
    given = output_dir or (config.output_dir if config is not None and not resume else None)
    if given is None and config is None:
        raise ContinualLMError("--resume needs the run directory")
    preset = None
    if config is not None and config.preset:  # the preset's values (a resumed run's recorded values already hold
        config, preset = apply_preset(config, backbone)  # them: the preset then changes nothing)
    path = Path(given or default_output_dir(config)).expanduser().absolute()
    run_dir = RunDir(path)
    found = run_dir.contents()
    if found.kind == "file":
        raise ContinualLMError(f"output directory {path} is a file, not a directory; choose another --output-dir")
    if run_dir.is_locked_by_another_process():
        raise ContinualLMError(f"run directory {path} is in use by another process (see {path / '.lock'}); wait "
                               f"for it to finish or stop it before {'resuming' if resume else 'writing'} it")
    record = None
    if resume or (reuse and found.kind == "run"):
        if found.kind != "run":
            raise ContinualLMError(f"--resume {path}: no continual_lm run there (no config.yaml)")
        config, record = same_configuration(config, path, resume=resume, how_to_replace=how_to_replace)
        finished = run_dir.results_path.exists()
        action = "reuse" if reuse and finished else "resume"
    else:
        config = resolve_config(config, path)
        if found.kind == "other" or (found.kind == "run" and found.foreign and overwrite):
            listed = ", ".join(found.foreign[:6]) + (", ..." if len(found.foreign) > 6 else "")
            if overwrite:
                raise ContinualLMError(f"--overwrite {path}: refusing to delete it: it is not a continual_lm run "
                                       f"directory, or holds what a run does not write ({listed}); remove it "
                                       f"yourself or choose another --output-dir")
            raise ContinualLMError(f"output directory {path} already exists, is not empty and is not a "
                                   f"continual_lm run ({listed}); --resume and --overwrite cannot use it: choose "
                                   f"another --output-dir")
        if found.kind == "run" and not overwrite:
            raise ContinualLMError(f"output directory {path} already exists and is not empty; pass --resume {path} "
                                   f"to continue it or --overwrite to replace it")
        action = "replace" if found.kind == "run" else "start"
    if action == "reuse":
        if record is not None:
            _check_data(path, record, data_fingerprint(load_stream_for(config), config))
            _check_global_batch(path, record, config, _processes())
        import json

        try:
            results = json.loads(run_dir.results_path.read_text())
        except (OSError, ValueError) as err:
            raise ContinualLMError(f"{run_dir.results_path} is corrupted ({err}); replace the run "
                                   f"({how_to_replace})") from None
        return PreparedRun(path, config, "reuse", results=results)
    if config.threads is not None:  # else the process' setting stands (the CLI applies threads.py's policy)
        from ..threads import apply_threads

        apply_threads(config.threads)
    runner = build_runner(config, path, backbone=backbone)
    fingerprint, processes = runner.data_fingerprint, runner.accelerator.num_processes
    if action == "resume":
        if record is not None:
            _check_data(path, record, fingerprint)
            _check_global_batch(path, record, config, processes)
            record = None  # it stays as written when the run started
        else:  # a run of an earlier version: record it now, so that later resumes are checked
            record = new_record(config, fingerprint, processes)
    else:
        record = new_record(config, fingerprint, processes)
    return PreparedRun(path, config, action, runner=runner, record=record,
                       preset=preset if action in ("start", "replace") else None)


def apply_preset(config: RunConfig, backbone=None) -> tuple[RunConfig, dict[str, Any]]:
    """``config`` with its preset's values below the values given (presets/__init__.py), and the record of what the
    preset did. Applied once, when a run starts: a resumed run reads the values from its config.yaml."""
    from ..presets import model_family_of, resolve_preset

    return resolve_preset(config, model_family_of(config, backbone))


def same_configuration(config: RunConfig | None, path: Path, *, resume: bool = True,
                       how_to_replace: str = "--overwrite") -> tuple[RunConfig, dict[str, Any] | None]:
    """``config`` resolved for the run in ``path`` (None: the recorded one, without --trust-remote-code), and the
    run's run.json; refused unless its identity is the recorded one. Cheap: reads the directory only."""
    recorded, record = recorded_config(path)
    if config is None:
        config = dataclasses.replace(recorded, trust_remote_code=False, progress=True)
    config = resolve_config(config, path)
    changes = differences(identity(resolve_config(recorded)), identity(config))
    if changes:
        what = describe(changes, "recorded", "given" if resume else "asked for")
        if resume:
            raise ContinualLMError(f"--resume {path}: {what}. A resumed run continues with its recorded "
                                   f"configuration: drop these options, or start a new run elsewhere")
        raise ContinualLMError(f"{path} holds a run of another configuration ({what}); a run is reused only for its "
                               f"own configuration: choose another output directory, or replace it ({how_to_replace})")
    if recorded.trust_remote_code and not config.trust_remote_code:
        raise ContinualLMError(f"{path} was run with --trust-remote-code (model {recorded.model} runs its own code); "
                               f"pass --trust-remote-code again to continue it, only if you trust that code")
    return config, record


def _processes() -> int:
    from accelerate import PartialState

    from .loop import _cpu_processes

    return PartialState(cpu=_cpu_processes()).num_processes


def _check_global_batch(path: Path, record: dict[str, Any], config: RunConfig, processes: int) -> None:
    recorded, now = record.get("global_batch"), global_batch(config, processes)
    if recorded is not None and recorded != now:
        raise ContinualLMError(f"{path}: the run recorded a global batch of {recorded} examples; now it would be "
                               f"{now} (--batch-size {config.batch_size} x --grad-accum {config.grad_accum} x "
                               f"{processes} process(es)). Give --batch-size/--grad-accum that make {recorded} on this "
                               f"number of processes")


def _check_data(path: Path, record: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    found = data_differences(record["data"], fingerprint)
    if found:
        raise ContinualLMError(f"{path}: the data differs from when the run started ({'; '.join(found)}); restore "
                               f"the data the run was started with, or start a new run")


def run(config: RunConfig | None = None, *, output_dir: str | Path | None = None, resume: bool = False,
        overwrite: bool = False, reuse: bool = False, backbone=None) -> dict[str, Any]:
    """Run, resume, replace or reuse (see ``prepare_run``); returns the results.json content."""
    return prepare_run(config, output_dir=output_dir, resume=resume, overwrite=overwrite, reuse=reuse,
                       backbone=backbone).start()

