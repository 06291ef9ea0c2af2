"""Shared test helpers: a tiny, fast run configuration on the demo stream."""
import importlib.util
import sys
from pathlib import Path

from continual_lm import run
from continual_lm.callbacks import Callback
from continual_lm.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent


def load_script(relative_path: str):
    """Import a script of the repository that is not part of the package (bench/, examples/) as a module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # what dataclasses (and pickling) look a class's module up in
    spec.loader.exec_module(module)
    return module


class NoTaskIds(dict):
    """A batch that fails the test if the test-time path reads its task ids."""

    def __getitem__(self, key):
        assert key != "task_ids", "the test path read a task id"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "task_ids", "the test path read a task id"
        return super().get(key, default)


def tiny_config(tmp_path, method="inclora", model="tiny-random-llama", **overrides) -> RunConfig:
    settings = dict(
        benchmark="demo", method=method, model=model, seed=3, output_dir=str(tmp_path / "run"),
        max_train_per_task=8, max_test_per_task=4, batch_size=4, eval_batch_size=8, max_input_length=64,
        max_target_length=6, lr=5e-3, progress=False,
    )
    settings.update(overrides)
    config = RunConfig(**settings)
    config.validate()
    return config


class PhaseRecorder(Callback):
    """A callback recording ``take(run)`` after each phase's training (checkpointed, not yet evaluated); default: a
    copy of every model parameter. Pass it to ``run(..., callbacks=[recorder])``; read ``recorder.records``."""

    def __init__(self, take=None):
        self.take = take or (lambda run: {n: p.detach().clone() for n, p in run.model.named_parameters()})
        self.records = []

    def on_train_end(self, run, phase):
        self.records.append(self.take(run))


class Crash(Exception):
    """Raised by a test to simulate a run killed at a chosen point."""


class CrashAt(Callback):
    """A callback that kills the run (raises Crash) at ``event`` of phase ``row`` (None: the first phase, whatever
    its row): "on_train_begin" (before the phase trains), "on_train_end" (trained and checkpointed, not evaluated)
    or "on_phase_evaluated" (evaluated, not yet recorded in state.json)."""

    def __init__(self, event: str, row: int | None):
        self.event, self.row = event, row

    def _at(self, event: str, phase) -> None:
        if event == self.event and (self.row is None or phase.row == self.row):
            raise Crash()

    def on_train_begin(self, run, phase, steps):
        self._at("on_train_begin", phase)

    def on_train_end(self, run, phase):
        self._at("on_train_end", phase)

    def on_phase_evaluated(self, run, phase, evaluation):
        self._at("on_phase_evaluated", phase)


class RunCapture(Callback):
    """A callback keeping the run object (model, method, state) as it is at the end of the run."""

    def __init__(self):
        self.run = None

    def on_run_end(self, run, results):
        self.run = run


def run_crashed_in_first_evaluation_then_resumed(config_at, where) -> dict:
    """Run ``config_at(where)`` killed before its first evaluation (the first phase trained and checkpointed, so the
    resumed run loads its state and trains any later phase itself; mtl's one phase is not row 0), then ``--resume``
    it; return the resumed results. ``config_at(path)`` builds a fresh config writing to ``path / "run"``."""
    import pytest

    with pytest.raises(Crash):
        run(config_at(where), callbacks=[CrashAt("on_train_end", None)])
    return run(config_at(where), output_dir=where / "run", resume=True)


def method_specs(plugin_base: str = "seqlora") -> list[str]:
    """Every registered method as a ``--method`` spec: each base method alone, each plugin composed on
    ``plugin_base`` if that accepts it, else on the first registered base method that does."""
    from continual_lm.methods.registry import METHODS, method_class

    bases = [name for name in METHODS if not method_class(name).is_plugin]
    ordered = [plugin_base] + [name for name in bases if name != plugin_base]
    specs = list(bases)
    for plugin in (name for name in METHODS if method_class(name).is_plugin):
        base = next((b for b in ordered if plugin in method_class(b).composable_with), None)
        specs.append(f"{base}+{plugin}" if base else plugin)  # a plugin no base accepts: refused by build_method
    return specs


def smallest_config(where, spec: str, **overrides) -> RunConfig:
    """The smallest run of ``spec`` that still trains and evaluates two demo tasks (one optimizer step each)."""
    settings = dict(tasks=["sentiment", "number_sign"], max_train_per_task=2, max_test_per_task=1, batch_size=2,
                    eval_batch_size=2, max_input_length=32, max_target_length=3)
    return tiny_config(where, method=spec, **{**settings, **overrides})


def set_up_method(tmp_path, method: str, tasks: list[str], model="tiny-random-llama", before_tasks=0,
                  max_input_length=64, options=None):
    """A method set up on a tiny backbone with a minimal run context (no loop), ``before_task`` run for its first
    ``before_tasks`` tasks; returns (method, backbone)."""
    from types import SimpleNamespace

    import torch

    from continual_lm.data.collate import Collator
    from continual_lm.methods.base import RunContext, build_method
    from continual_lm.models.backbone import load_backbone
    from continual_lm.data.stream import load_stream_for

    config = tiny_config(tmp_path, method=method, model=model, tasks=tasks,
                         method_options={method: options} if options else {})
    torch.manual_seed(0)
    backbone = load_backbone(model, seed=0)
    built = build_method(config)
    built.tasks = load_stream_for(config).tasks
    collator = Collator(backbone.tokenizer, backbone.is_seq2seq, max_input_length, 6)
    built.context = RunContext(config, built.tasks, collator, SimpleNamespace(device=torch.device("cpu")), tmp_path)
    built.setup(backbone.model, backbone)
    for i in range(before_tasks):
        built.before_task(backbone.model, i, built.tasks[i])
    return built, backbone


def checkpoint_tensors(run_dir, row: int) -> dict:
    """The trainable tensors of phase ``row``'s checkpoint in ``run_dir`` (read through the run directory's own
    loader, which verifies them)."""
    from continual_lm.train.checkpoint import RunDir

    return RunDir(run_dir).load_checkpoint(row)[0]


def checkpoint_method_tensors(run_dir, row: int) -> dict:
    """The method-state tensors (``Method.extra_state``) of phase ``row``'s checkpoint in ``run_dir``."""
    from continual_lm.train.checkpoint import RunDir

    return RunDir(run_dir).load_checkpoint(row)[1]


def snapshot(folder) -> dict:
    """Every file under ``folder`` (but the lock file) with its bytes: equal snapshots = nothing changed."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def skip_report_and_gc(monkeypatch) -> None:
    """For tests that check weights and state, not reports: skip the report's figures and accelerate's gc.collect
    after each phase (together most of a tiny run's time in a long test process; neither changes what is trained,
    evaluated or checkpointed)."""
    import gc

    from continual_lm.eval import report

    monkeypatch.setattr(report, "write_run_report", lambda run_dir, results: None)
    monkeypatch.setattr(gc, "collect", lambda *args: 0)


def first_table(lines: list[str]) -> list[str]:
    """The rows of the first markdown table in ``lines`` (bench/readme_tables.py's, which writes README's tables)."""
    return load_script("bench/readme_tables.py").first_table(lines)
