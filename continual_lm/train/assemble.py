"""One place that turns a configuration (and optionally a stream built in Python and callbacks) and an output
directory into a running (or reused) run, and a finished run directory back into its model (``load_final_runner``).

``prepare_run`` decides what to do with the directory (start, resume, replace, reuse) and checks everything that
can be checked (configuration, method and its options, data, model, LoRA targets, the directory's contents, the
recorded configuration and data of an earlier run) while writing nothing. ``PreparedRun.start`` then takes the
directory's lock, checks the directory again under it, and only then writes (clears a replaced run, config.yaml,
run.json, stream.json) and runs. The CLI (run, sweeps), the demo, bench/reproduce.py and the Python API
(``continual_lm.run``) all go through it; each run gets the shipped callbacks (callbacks/) and the caller's.

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
from ..methods.base import Method
from .checkpoint import RunDir
from .engine import cpu_processes
from .run_record import (data_differences, data_fingerprint, describe, differences, global_batch, identity,
                         new_record, recorded_identity, resolve_config)


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
    stream: dict[str, Any] | None = None  # the stream's definition (stream.json), written unless the run has one

    def start(self) -> dict[str, Any]:
        """Lock the directory, check it again under the lock, write config.yaml and run.json, run; the results."""
        if self.action == "reuse":
            return self.results
        from accelerate import PartialState

        state = PartialState(cpu=cpu_processes())
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
        if self.stream is not None and not run_dir.stream_path.exists():
            run_dir.write_stream(self.stream)


def prepare_run(config: RunConfig | None = None, *, output_dir: str | Path | None = None, resume: bool = False,
                overwrite: bool = False, reuse: bool = False, backbone=None, stream=None, callbacks=(),
                how_to_replace: str = "--overwrite") -> PreparedRun:
    """Check and build a run without writing anything (see the module docstring). ``stream``: a
    ``data.stream.Stream`` built in Python instead of the configuration's benchmark; ``callbacks``: callbacks of the
    caller's, called after the shipped ones."""
    from ..data.stream import resolve_stream, stream_definition

    if sum((resume, overwrite, reuse)) > 1:
        raise ContinualLMError("--resume, --overwrite and reuse exclude each other")
    if config is None and not resume:
        raise ContinualLMError("a configuration is needed unless resuming")
    given = output_dir or (config.output_dir if config is not None and not resume else None)
    if given is None and config is None:
        raise ContinualLMError("--resume needs the run directory")
    if stream is not None and config is not None:
        config = config_for_stream(config)
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
            _check_data(path, record, data_fingerprint(resolve_stream(config, stream), config))
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
    runner = build_runner(config, path, backbone=backbone, stream=stream, callbacks=callbacks)
    fingerprint, processes = runner.data_fingerprint, runner.accelerator.num_processes
    definition = stream_definition(runner.stream, runner.collator.max_new_tokens)
    if action == "resume":
        if record is not None:
            _check_data(path, record, fingerprint)
            _check_global_batch(path, record, config, processes)
            record = None  # it stays as written when the run started
        else:  # a run of an earlier version: record it now, so that later resumes are checked
            record = new_record(config, fingerprint, processes, definition)
    else:
        record = new_record(config, fingerprint, processes, definition)
    return PreparedRun(path, config, action, runner=runner, record=record,
                       preset=preset if action in ("start", "replace") else None, stream=definition)


def config_for_stream(config: RunConfig) -> RunConfig:
    """The configuration of a run whose stream is given in Python: benchmark ``custom`` (another benchmark given
    is refused: the stream replaces it)."""
    if config.benchmark != "custom" and config.is_given("benchmark"):
        raise ContinualLMError(f"a stream given in Python replaces the benchmark; drop benchmark={config.benchmark!r} "
                               f"(the run records benchmark 'custom')")
    return dataclasses.replace(config, benchmark="custom", order=None)


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

    return PartialState(cpu=cpu_processes()).num_processes


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
        overwrite: bool = False, reuse: bool = False, backbone=None, stream=None, callbacks=()) -> dict[str, Any]:
    """Run, resume, replace or reuse (see ``prepare_run``); returns the results.json content."""
    return prepare_run(config, output_dir=output_dir, resume=resume, overwrite=overwrite, reuse=reuse,
                       backbone=backbone, stream=stream, callbacks=callbacks).start()


# ---- building a run ----------------------------------------------------------------------------------------------
def default_output_dir(config: RunConfig) -> Path:
    order = f"-o{config.order}" if config.order else ""
    return Path("runs") / f"{config.benchmark}{order}-{config.method}-{config.model.replace('/', '_')}-s{config.seed}"


def build_runner(config: RunConfig, path: Path, *, backbone=None, stream=None, callbacks=(),
                 for_training: bool = True, with_data: bool = True):
    """Everything a run needs, built from its configuration: stream, backbone, method (set up), accelerator,
    callbacks (the shipped ones, then ``callbacks``). Writes nothing (``prepare_run`` decides what happens to the run
    directory, after this succeeded). ``for_training``: also check what only a run that trains needs (its FWT
    reference, task names in prompts, the evaluation schedule); a finished run loaded for predict/export/merge
    ``with_data=False`` reads its tasks from its stream.json when it has one (so that it works without its data)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from ..callbacks import default_callbacks
    from ..data.stream import resolve_stream, stream_from_definition
    from ..eval.results import check_eval_schedule, evaluated_phases, trains_each_task_alone
    from ..methods.base import build_method
    from .corpus_stream import check_corpus_method, corpus_tasks_in_blocks
    from .engine import check_engine
    from .loop import ContinualRunner

    method = build_method(config)  # validates the method spec and its options before any heavy work
    if for_training:  # a run that trains (not a finished run loaded for predict/export, which may have moved)
        check_task_names_in_prompts(config, method)
        if config.general_tasks:
            from ..eval.general import check_usable

            check_usable(method)
    # Several processes on a machine without an accelerator: cpu=True makes accelerate form a gloo process group
    # instead of running independent copies that all write the run directory.
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=config.mixed_precision,
                              cpu=cpu_processes(), log_with=None if config.report_to == "none" else config.report_to,
                              project_dir=str(Path(path) / "tracking"))
    check_engine(accelerator, method, config)
    kept = None if for_training or with_data else RunDir(path).read_stream()
    stream = stream_from_definition(kept, str(RunDir(path).stream_path)) if kept else resolve_stream(config, stream)
    fingerprint = data_fingerprint(stream, config) if for_training else None  # of the tasks as read
    check_corpus_method(method, stream.tasks)
    phases = method.schedule(len(stream.tasks), config.eval_all_tasks)
    single_task = None
    if for_training:
        option = "--eval-final-only" if config.eval_final_only else f"--eval-every {config.eval_every}"
        check_eval_schedule(phases, evaluated_phases(len(phases), config.eval_every, config.eval_final_only),
                            [t.name for t in stream.tasks], option)
        if config.single_task_from and not trains_each_task_alone(phases, len(stream.tasks)):  # checked now
            single_task = read_single_task_reference(config.single_task_from, stream.tasks, method)
    config.order = stream.order
    config.output_dir = str(path)
    if config.lr is None:
        config.lr = method.default_lr()
    set_seed(config.seed)
    if backbone is None:
        from ..models.backbone import load_backbone

        backbone = load_backbone(config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
                                 seed=config.seed)
    backbone.model.to(accelerator.device)
    if not kept:
        stream.tasks = corpus_tasks_in_blocks(stream, backbone, config)
    method.tasks = stream.tasks
    runner = ContinualRunner(config, path, stream, backbone, method, accelerator, single_task=single_task,
                             callbacks=[*default_callbacks(), *callbacks])  # sets method.context
    runner.data_fingerprint = fingerprint
    method.setup(backbone.model, backbone)
    if config.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return runner


def load_final_runner(run_dir: str | Path, *, backbone=None, trust_remote_code: bool = False,
                      with_data: bool = False):
    """The runner of a run directory with its final trained model restored (nothing is written). The model's own
    code runs only with ``trust_remote_code`` (the current command's choice, never the run directory's). Its tasks
    come from its stream.json (no data needed) unless ``with_data`` (analyses that read training examples)."""
    path = Path(run_dir)
    config, _ = recorded_config(path)
    if config.trust_remote_code and not trust_remote_code:
        raise ContinualLMError(f"{path} was run with --trust-remote-code: its model ({config.model}) runs its own "
                               f"code. Pass --trust-remote-code to load it, only if you trust that code")
    config = dataclasses.replace(config, trust_remote_code=trust_remote_code, progress=False)
    runner = build_runner(config, path, backbone=backbone, for_training=False, with_data=with_data)
    runner.restore_final()
    return runner


def check_task_names_in_prompts(config: RunConfig, method: Method) -> None:
    """--prompt-task-name hands the task's name to the model with every input: refused for a method that declares
    no task id at test time, unless the user opts in to the leak (--allow-task-name-leak, recorded in results.json)."""
    if config.prompt_task_name and not method.uses_task_id_at_test and not config.allow_task_name_leak:
        raise ContinualLMError(f"--prompt-task-name puts each task's name into its prompts, which hands method "
                               f"{method.name} (declared: no task id at test time) the task id; add "
                               f"--allow-task-name-leak for a leak experiment (recorded in results.json)")


def read_single_task_reference(run_dir: str, tasks: list, method: Method) -> dict[str, float]:
    """The FWT reference scores of ``--single-task-from RUN_DIR``, checked before anything trains: a finished run of
    method `single`, with a score for every task of the stream, that trained the same kind of PET block as
    ``method`` (a LoRA reference says nothing about how well a soft prompt learns a task)."""
    import json

    import yaml

    flag = f"--single-task-from {run_dir}"
    folder = RunDir(run_dir)
    if not folder.path.is_dir():
        raise ContinualLMError(f"{flag}: no such run directory")
    path = folder.results_path
    if not path.exists():
        raise ContinualLMError(f"{flag}: no results.json there (expected a finished `single` run)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ContinualLMError(f"{flag}: {path} is not valid JSON: {err}") from None
    if results.get("method") != "single" or not results.get("single_task"):
        raise ContinualLMError(f"{flag}: a run of method {results.get('method')!r} without 'single_task' scores "
                               f"(expected a run of method `single`)")
    reference = results["single_task"]
    missing = [t.name for t in tasks if t.name not in reference]
    if missing:
        raise ContinualLMError(f"{flag}: no single-task score for {', '.join(missing)}")
    kind = results.get("pet_kind")
    if kind is None:  # written before results.json recorded it: the kind is in the run's config.yaml
        config_path = folder.config_path
        options = (yaml.safe_load(config_path.read_text()) or {}).get("method_options") if config_path.exists() else {}
        kind = ((options or {}).get("single") or {}).get("pet", "lora")
    if kind != method.pet_kind:
        raise ContinualLMError(f"{flag}: that single run trained {kind} blocks, but method {method.name} trains "
                               f"{method.pet_kind} blocks; its FWT reference must train the same kind: run "
                               f"`--method single --single-pet {method.pet_kind}` on the same stream")
    return {t.name: reference[t.name] for t in tasks}

