"""Forgetting of general abilities, measured with EleutherAI's lm-evaluation-harness (``pip install lm-eval``).

A model (the base model, or a run's final model with its LoRA banks and mixers in place) is wrapped as lm-eval's
``HFLM`` and scored on named lm-eval tasks: log-likelihood multiple choice such as ``hellaswag``, ``winogrande``,
``arc_challenge`` (their data sets come from the Hugging Face Hub, so they need a network or a warm cache), or a
local task defined by an lm-eval task YAML in ``task_dir`` (e.g. ``dataset_path: json`` over a local file).

    scores = evaluate_general(model, tokenizer, ["my_mc"], task_dir="my_tasks/", limit=200)   # {"my_mc": 41.5}

Scores are accuracies on the 0..100 scale of the rest of continual_lm (lm-eval's ``acc`` x 100, 4 decimals).
In a run, ``general_tasks`` measures the base model before the first task and the final model after the stream,
into ``results.json["general"]`` (docs/metrics.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ContinualLMError
from .tables import cell, fmt, table

METRIC = "acc"


def _import_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ContinualLMError("general_tasks (--general-tasks) needs EleutherAI's lm-evaluation-harness: "
                               "pip install 'continual-lm[general]' (or pip install lm-eval)") from None


def task_manager(tasks: list[str], task_dir: str | Path | None = None):
    """An lm-eval TaskManager that knows ``tasks``: the YAMLs under ``task_dir`` first; lm-eval's own task index
    (thousands of files, ~15 s to build) only when a task is not defined there."""
    _import_lm_eval()
    from lm_eval.tasks import TaskManager

    if task_dir is not None and not Path(task_dir).is_dir():
        raise ContinualLMError(f"general task dir {task_dir}: no such directory (expected a folder of lm-eval "
                               f"task YAML files)")
    include = str(task_dir) if task_dir is not None else None
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=include)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {task_dir}" if task_dir else " (pass --general-task-dir for task YAMLs of your own)"
        raise ContinualLMError(f"general tasks: unknown lm-eval task(s) {', '.join(unknown)}; expected names of "
                               f"lm-eval tasks (e.g. hellaswag, winogrande, arc_challenge){where}")
    return manager


def check_usable(method) -> None:
    """lm-eval calls the model itself, without a task id: a method must need none at test time, and its evaluation
    must be the model's own forward (methods that override ``forward``/``generate``, e.g. SAPT's block selection or
    soft prompts, would be bypassed and scored wrongly, so they are refused)."""
    from ..methods.base import Method

    if method is None:
        return
    if getattr(method, "uses_task_id_at_test", False):
        raise ContinualLMError(f"general_tasks: method {method.name} needs a task id at test time, which "
                               f"lm-eval's task-agnostic scoring cannot give; measure its base model only")
    base = type(getattr(method, "base", method))  # a "+" composition evaluates through its base method
    if base.forward is not Method.forward or base.generate is not Method.generate:
        raise ContinualLMError(f"general_tasks: method {method.name} evaluates through its own forward/generate, "
                               f"which lm-eval's plain model call would bypass; general abilities can be measured "
                               f"for methods whose PET blocks live in the model (LoRA banks and their mixers)")


def evaluate_general(model, tokenizer, tasks: list[str], *, task_dir: str | Path | None = None,
                     limit: int | None = None, batch_size: int = 8, is_seq2seq: bool | None = None,
                     manager=None) -> dict[str, float]:
    """``{task: accuracy 0..100}`` of ``model`` on lm-eval ``tasks`` (zero-shot, log-likelihood scoring).

    ``limit`` caps the examples per task (lm-eval's ``limit``). The model is used as it is (injected LoRA banks
    and mixers included); it is left in eval mode. Global RNGs are not touched."""
    if not tasks:
        raise ContinualLMError("general_tasks: expected at least one lm-eval task name")
    manager = manager or task_manager(tasks, task_dir)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if is_seq2seq is None:
        is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              backend="seq2seq" if is_seq2seq else "causal")
    try:
        output = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=None,
                                 log_samples=False, bootstrap_iters=0, random_seed=None, numpy_random_seed=None,
                                 torch_random_seed=None)
    except ConnectionError as err:  # a Hub data set without network and not in the local datasets cache
        raise ContinualLMError(f"general tasks {', '.join(tasks)}: a data set could not be fetched ({err}); run once "
                               f"with network access to fill the Hugging Face datasets cache, or define a local "
                               f"task (lm-eval YAML over a local file) in a general task dir") from None
    scores: dict[str, float] = {}
    for task in tasks:
        result = output["results"].get(task, {})
        value = result.get(f"{METRIC},none", result.get(METRIC))
        if value is None:
            raise ContinualLMError(f"lm-eval task {task} reported no '{METRIC}' (it reported "
                                   f"{', '.join(sorted(result)) or 'nothing'}); general_tasks needs multiple-choice "
                                   f"tasks scored by accuracy")
        scores[task] = round(100.0 * float(value), 4)
    return scores


def measure_run_general(runner, state: dict[str, Any], when: str) -> None:
    """In a run: score the current model ("before": the base model, "after": the final one) once, into
    ``state["general"]`` (the value of ``results.json["general"]``), so a resumed run does not measure again.
    Only the main process measures (lm-eval scores a model object in a single process)."""
    config = runner.config
    if not config.general_tasks or when in state.get("general", {}):
        return
    if runner.is_main:
        check_usable(runner.method)
        scores = evaluate_general(runner.model, runner.backbone.tokenizer, list(config.general_tasks),
                                  task_dir=config.general_task_dir, limit=config.general_limit,
                                  batch_size=config.eval_batch_size, is_seq2seq=runner.backbone.is_seq2seq)
        general = state.setdefault("general", {"tasks": list(config.general_tasks), "metric": METRIC})
        general[when] = scores
        runner.run_dir.write_state(state)
    runner.accelerator.wait_for_everyone()


def general_markdown(general: dict[str, Any]) -> str:
    """The before/after table of ``results.json["general"]``: one row per task, the change, and the average."""
    before, after = general.get("before") or {}, general.get("after") or {}
    rows, deltas = [], []
    for task in general.get("tasks", []):
        b, a = before.get(task), after.get(task)
        delta = a - b if a is not None and b is not None else None
        if delta is not None:
            deltas.append(delta)
        rows.append([cell(task), fmt(b, 2), fmt(a, 2), fmt(delta, 2)])

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    tasks = general.get("tasks", [])
    rows.append(["avg", fmt(mean([before.get(t) for t in tasks]), 2), fmt(mean([after.get(t) for t in tasks]), 2),
                 fmt(mean(deltas), 2)])
    return (f"General abilities (lm-eval, {general.get('metric', METRIC)} x 100; base model before the stream, "
            f"final model after it):\n\n" + table(["task", "before", "after", "change"], rows))
