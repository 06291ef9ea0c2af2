"""Streams: the ordered tasks a run trains on, and the tasks it only evaluates (unseen tasks).

A stream comes from a run's configuration (a benchmark and order, a stream YAML: ``load_stream_for``) or from
Python objects, given to ``continual_lm.run(stream=...)``:

    task_from_records("intent", train=[{"input": ..., "output": ...}, ...], test=[...], labels="auto")
    task_from_file("intent", "train.jsonl", "test.jsonl", input_field="text")        # JSON list or JSONL files
    task_from_dataset("sst2", datasets_object_or_hub_id, input_field="sentence", output_field="label_text")
    Stream([task_a, task_b], unseen=[task_c])

Every builder takes the options of a stream YAML's task (docs/benchmarks.md, "Custom streams") and checks them
the same way. A run subsamples a given stream with its --max-*-per-task options, as it does a benchmark.

A run directory keeps its stream's definition (``stream.json``: each task's name, kind, metric, instruction,
template, labels and answer rule with its resolved number of new tokens, without examples), so that a finished run
can predict, export and merge after it was moved away from its data. The test examples are kept beside the
predictions (``predictions/after_phase_XX.json``: input, references, prediction and score of each example).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ContinualLMError
from .tasks import AnswerRule, Task

STREAM_FORMAT = 1


@dataclass
class Stream:
    tasks: list[Task]
    benchmark: str = "custom"
    order: str | None = None
    unseen: list[Task] = field(default_factory=list)  # evaluated zero-shot only; their train split is dropped

    def __post_init__(self):
        if not isinstance(self.tasks, list) or not self.tasks or not all(isinstance(t, Task) for t in self.tasks):
            raise ContinualLMError("a stream needs a non-empty list of tasks (continual_lm.Task, e.g. from "
                                   "task_from_records)")
        names = [t.name for t in self.tasks + list(self.unseen)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ContinualLMError(f"stream: task name(s) {', '.join(repeated)} given more than once; each task of a "
                                   f"stream (unseen tasks included) needs its own name")


# ---- streams of a configuration -----------------------------------------------------------------------------
def load_stream_for(config) -> Stream:
    """The stream a RunConfig names: its benchmark's order (or --tasks, or a stream YAML), subsampled, and its
    --unseen-tasks."""
    from .benchmarks import list_benchmarks, load_stream, resolve_order

    order = config.order
    if config.benchmark == "custom" and config.stream_file is None:
        raise ContinualLMError("benchmark 'custom' needs a stream: pass --stream-file my_stream.yaml (see "
                               "docs/benchmarks.md), or from Python continual_lm.run(stream=...); a run whose stream "
                               "was given in Python is resumed from Python with the same stream")
    if config.benchmark != "custom" and order is None and not config.tasks:
        order = list_benchmarks()[config.benchmark][0] if config.benchmark in list_benchmarks() else None
    if config.benchmark != "custom" and not config.tasks:
        resolve_order(config.benchmark, order)  # clear error for an unknown benchmark/order before loading data
    tasks = load_stream(
        config.benchmark, order, data_dir=config.data_dir, stream_file=config.stream_file,
        max_train=config.max_train_per_task, max_test=config.max_test_per_task,
        max_train_per_class=config.max_train_per_class, max_test_per_class=config.max_test_per_class,
        seed=config.seed, task_names=config.tasks,
    )
    return Stream(tasks, config.benchmark, order, load_unseen_tasks(config, tasks))


def load_unseen_tasks(config, stream_tasks: list[Task]) -> list[Task]:
    """--unseen-tasks NAME (a task of the run's benchmark) or BENCHMARK:NAME (any reader), test split only."""
    from .benchmarks import read_task, subsample

    unseen = []
    for spec in config.unseen_tasks or []:
        benchmark, _, name = spec.rpartition(":")
        task = read_task(benchmark or config.benchmark, config.data_dir, name, stream_file=config.stream_file,
                         seed=config.seed)
        if task.name in {t.name for t in stream_tasks}:
            raise ContinualLMError(f"--unseen-tasks {spec}: {task.name} is part of the training stream; unseen tasks "
                                   f"must be tasks the run never trains on")
        task = subsample(task, max_test=config.max_test_per_task, max_test_per_class=config.max_test_per_class,
                         seed=config.seed)
        unseen.append(task.with_examples(train=[]))
    return unseen


def resolve_stream(config, given: Stream | None = None) -> Stream:
    """The run's stream: the one given in Python (subsampled with the configuration's caps and seed, its unseen
    tasks reduced to their test split) or the one the configuration names."""
    if given is None:
        return load_stream_for(config)
    from .benchmarks import subsample

    if not isinstance(given, Stream):
        raise ContinualLMError(f"stream: expected a continual_lm.Stream, got {type(given).__name__}")
    for option in ("stream_file", "tasks", "unseen_tasks"):
        if getattr(config, option):
            raise ContinualLMError(f"--{option.replace('_', '-')} selects tasks of a benchmark or stream file; it "
                                   f"cannot be combined with a stream given in Python (put those tasks into it)")
    caps = dict(max_train=config.max_train_per_task, max_test=config.max_test_per_task,
                max_train_per_class=config.max_train_per_class, max_test_per_class=config.max_test_per_class,
                seed=config.seed)
    unseen = [subsample(t, max_test=caps["max_test"], max_test_per_class=caps["max_test_per_class"],
                        seed=config.seed).with_examples(train=[]) for t in given.unseen]
    return Stream([subsample(t, **caps) for t in given.tasks], given.benchmark, given.order, unseen)


# ---- streams from Python objects ----------------------------------------------------------------------------
def task_from_records(name: str, train: list[dict], test: list[dict] | None = None, **options: Any) -> Task:
    """A task from records (mappings with an input and an output field); ``test`` None splits ``train`` by
    ``test_fraction`` (default 0.2, seeded). ``options``: input_field, output_field, instruction, labels ("auto"
    or a list), metric, template, stop, extract, max_new_tokens, truncate (docs/benchmarks.md)."""
    from .formats import custom_task

    where = f"task {name!r}"
    for split, records in (("train", train), ("test", test)):
        if records is not None and (isinstance(records, (str, dict)) or not hasattr(records, "__iter__")):
            raise ContinualLMError(f"{where}: {split} must be a list of records (mappings), got "
                                   f"{type(records).__name__}; task_from_file reads files")
    return custom_task(where, name, ("train records", list(train)),
                       None if test is None else ("test records", list(test)), source="python", **options)


def task_from_file(name: str, train: str | Path, test: str | Path | None = None, **options: Any) -> Task:
    """A task from JSON (a list of objects) or JSONL files; ``test`` None splits ``train`` (see
    ``task_from_records``, which takes the same options)."""
    from .formats import custom_task, read_records

    splits = [None if path is None else (str(Path(path)), read_records(path)) for path in (train, test)]
    return custom_task(f"task {name!r}", name, splits[0], splits[1], source=str(Path(train)), **options)


def task_from_dataset(name: str, dataset: Any, *, train_split: str = "train", test_split: str | None = "test",
                      load_options: dict | None = None, **options: Any) -> Task:
    """A task from a Hugging Face ``datasets`` object (a DatasetDict, or a mapping of split name -> Dataset) or a hub
    id (``datasets.load_dataset(dataset, **load_options)``; needs a network or a warm cache). ``test_split`` None,
    or a split the data set lacks, splits the training records (see ``task_from_records`` for the options)."""
    from .formats import custom_task

    source = "datasets"
    if isinstance(dataset, str):
        try:
            import datasets
        except ImportError:
            raise ContinualLMError(f"task {name!r}: a hub id needs the datasets library (pip install datasets)") \
                from None
        source = f"datasets:{dataset}"
        try:
            dataset = datasets.load_dataset(dataset, **(load_options or {}))
        except (ConnectionError, FileNotFoundError) as err:
            raise ContinualLMError(f"task {name!r}: the data set {source[9:]!r} could not be loaded ({err}); it needs "
                                   f"a network or the Hugging Face datasets cache") from None
    if not hasattr(dataset, "keys") or train_split not in dataset:
        have = ", ".join(dataset.keys()) if hasattr(dataset, "keys") else type(dataset).__name__
        raise ContinualLMError(f"task {name!r}: the data set has no split {train_split!r} (it has: {have}); pass "
                               f"train_split=")

    def records(split):
        return [dict(record) for record in dataset[split]]

    test = records(test_split) if test_split is not None and test_split in dataset else None
    return custom_task(f"task {name!r}", name, (f"split {train_split!r}", records(train_split)),
                       None if test is None else (f"split {test_split!r}", test), source=source, **options)


# ---- the definition a run directory keeps (stream.json) ------------------------------------------------------
def stream_definition(stream: Stream, max_new_tokens) -> dict[str, Any]:
    """What predicting with the stream's tasks needs, without examples; ``max_new_tokens(task)`` resolves each
    task's answer budget (Collator.max_new_tokens), so that it no longer depends on the training answers."""
    def task(t: Task) -> dict[str, Any]:
        return {"name": t.name, "kind": t.kind, "metric": t.metric, "instruction": t.instruction,
                "template": t.template, "labels": t.labels, "truncate": t.truncate,
                "extra": {k: v for k, v in t.extra.items() if k == "family"},  # SuperNI's task family
                "answer": {"stop": list(t.answer.stop), "extract": t.answer.extract,
                           "max_new_tokens": max_new_tokens(t)}}

    return {"continual_lm_stream": STREAM_FORMAT, "benchmark": stream.benchmark, "order": stream.order,
            "tasks": [task(t) for t in stream.tasks], "unseen": [task(t) for t in stream.unseen]}


def stream_from_definition(data: Any, where: str) -> Stream:
    """The stream of a ``stream_definition`` (tasks without examples), with errors naming ``where``."""
    try:
        def task(d: dict) -> Task:
            answer = d["answer"]
            return Task(name=d["name"], kind=d["kind"], metric=d["metric"], instruction=d["instruction"], train=[],
                        test=[], labels=d["labels"], template=d["template"], source=where, truncate=d["truncate"],
                        extra=dict(d.get("extra") or {}),
                        answer=AnswerRule(stop=tuple(answer["stop"]), extract=answer["extract"],
                                          max_new_tokens=answer["max_new_tokens"]))

        return Stream([task(d) for d in data["tasks"]], data["benchmark"], data["order"],
                      [task(d) for d in data["unseen"]])
    except (KeyError, TypeError, ContinualLMError) as err:
        raise ContinualLMError(f"{where} is malformed ({err!r}); it was edited or not written by continual_lm") \
            from None
