"""Benchmarks, their task orders, and loading a stream of (subsampled) tasks.

Task orders are facts from the papers' scripts (see docs/benchmarks.md):

* ``standard`` — Standard CL benchmark, orders 1-3 (O-LoRA == MIGU scripts).
* ``long`` — Long Sequence benchmark, orders 4-6 in MIGU's numbering (the canonical one), plus ``sapt4`` / ``sapt5``,
  SAPT's "Order 4" / "Order 5", which are MIGU's order 6 / order 4.
* ``superni`` — SAPT's SuperNI benchmark, orders 1-2.
* ``trace`` — the TRACE benchmark (Wang et al. 2023), order 1: the order of its paper and scripts, the only one it
  and the papers that report it use.
* ``demo`` — the embedded demo stream (no data needed).
* ``custom`` — a user's YAML stream; the file defines the order.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from continual_lm.data.demo import DEMO_TASK_NAMES, demo_task, demo_tasks
from continual_lm.data.formats import (
    read_clbenchmark_task,
    read_custom_stream,
    read_superni_task,
    read_trace_task,
    stable_seed,
)
from continual_lm.data.tasks import CLASSIFICATION, Task
from continual_lm.errors import ContinualLMError, unknown_choice

DATA_ENV = "CONTINUAL_LM_DATA"

STANDARD_ORDERS: dict[str, tuple[str, ...]] = {
    "1": ("dbpedia", "amazon", "yahoo", "agnews"),
    "2": ("dbpedia", "amazon", "agnews", "yahoo"),
    "3": ("yahoo", "amazon", "agnews", "dbpedia"),
}

LONG_ORDERS: dict[str, tuple[str, ...]] = {
    "4": ("mnli", "cb", "wic", "copa", "qqp", "boolqa", "rte", "imdb", "yelp", "amazon", "sst-2", "dbpedia",
          "agnews", "multirc", "yahoo"),
    "5": ("multirc", "boolqa", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia", "agnews",
          "yelp", "amazon", "yahoo"),
    "6": ("yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia", "agnews", "yahoo",
          "multirc", "boolqa", "wic"),
}
# SAPT numbers two of the long orders differently: SAPT "Order 4" == MIGU order 6, SAPT "Order 5" == MIGU order 4.
LONG_ORDER_ALIASES: dict[str, str] = {"sapt4": "6", "sapt5": "4"}

SUPERNI_ORDERS: dict[str, tuple[str, ...]] = {
    "1": ("task1572_samsum_summary", "task363_sst2_polarity_classification", "task1290_xsum_summarization",
          "task181_outcome_extraction", "task002_quoref_answer_generation", "task1510_evalution_relation_extraction",
          "task639_multi_woz_user_utterance_generation", "task1729_personachat_generate_next",
          "task073_commonsenseqa_answer_generation", "task1590_diplomacy_text_generation",
          "task748_glucose_reverse_cause_event_detection", "task511_reddit_tifu_long_text_summarization",
          "task591_sciq_answer_generation", "task1687_sentiment140_classification", "task875_emotion_classification"),
    "2": ("task748_glucose_reverse_cause_event_detection", "task073_commonsenseqa_answer_generation",
          "task1590_diplomacy_text_generation", "task639_multi_woz_user_utterance_generation",
          "task1572_samsum_summary", "task1687_sentiment140_classification", "task591_sciq_answer_generation",
          "task363_sst2_polarity_classification", "task1510_evalution_relation_extraction",
          "task1729_personachat_generate_next", "task181_outcome_extraction",
          "task511_reddit_tifu_long_text_summarization", "task002_quoref_answer_generation",
          "task1290_xsum_summarization", "task875_emotion_classification"),
}

# TRACE's scripts (scripts/train_*.sh --dataset_name ...): its only order.
TRACE_ORDERS: dict[str, tuple[str, ...]] = {
    "1": ("C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten"),
}

DEMO_ORDERS: dict[str, tuple[str, ...]] = {"1": DEMO_TASK_NAMES}


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    orders: Mapping[str, tuple[str, ...]]
    # reads one task: (data_dir or None, task name, seed) -> Task; None for ``custom`` (read from the YAML)
    reader: Callable[[Path | None, str, int], Task] | None
    needs_data_dir: bool
    order_aliases: Mapping[str, str] = field(default_factory=dict)

    def order_names(self) -> list[str]:
        """Order names, aliases included (canonical first)."""
        return [*self.orders, *self.order_aliases]

    @property
    def default_order(self) -> str | None:
        return next(iter(self.orders), None)

    def task_names(self) -> list[str]:
        """Every task that appears in one of the orders, in first-appearance order."""
        return list(dict.fromkeys(t for order in self.orders.values() for t in order))


def _clbenchmark_reader(data_dir: Path | None, name: str, seed: int) -> Task:
    return read_clbenchmark_task(resolve_data_dir(data_dir), name)


def _superni_reader(data_dir: Path | None, name: str, seed: int) -> Task:
    return read_superni_task(resolve_data_dir(data_dir), name)


def _trace_reader(data_dir: Path | None, name: str, seed: int) -> Task:
    return read_trace_task(resolve_data_dir(data_dir), name)


def _demo_reader(data_dir: Path | None, name: str, seed: int) -> Task:
    return demo_task(name, seed=seed)


BENCHMARKS: dict[str, Benchmark] = {
    "standard": Benchmark(
        "standard", "Standard CL benchmark (4 text-classification tasks, O-LoRA / MIGU)",
        STANDARD_ORDERS, _clbenchmark_reader, needs_data_dir=True,
    ),
    "long": Benchmark(
        "long", "Long Sequence benchmark (15 classification tasks; MIGU numbering, SAPT's as sapt4/sapt5)",
        LONG_ORDERS, _clbenchmark_reader, needs_data_dir=True, order_aliases=LONG_ORDER_ALIASES,
    ),
    "superni": Benchmark(
        "superni", "SuperNI benchmark (15 Super-NaturalInstructions tasks, SAPT)",
        SUPERNI_ORDERS, _superni_reader, needs_data_dir=True,
    ),
    "trace": Benchmark(
        "trace", "TRACE benchmark (8 tasks: stance in Chinese and finance, summarization, code, science QA, math, "
        "German simplification)", TRACE_ORDERS, _trace_reader, needs_data_dir=True,
    ),
    "demo": Benchmark(
        "demo", "Embedded demo stream (5 generated tasks; no data needed)",
        DEMO_ORDERS, _demo_reader, needs_data_dir=False,
    ),
    "custom": Benchmark(
        "custom", "A user-defined stream from a YAML file (--stream-file); the file defines the order",
        {}, None, needs_data_dir=False,
    ),
}


def get_benchmark(name: str) -> Benchmark:
    key = str(name).strip().lower()
    if key not in BENCHMARKS:
        raise unknown_choice("benchmark", name, BENCHMARKS)
    return BENCHMARKS[key]


def list_benchmarks() -> dict[str, list[str]]:
    """Benchmark name -> its order names (aliases included); ``custom`` has none."""
    return {name: bench.order_names() for name, bench in BENCHMARKS.items()}


def _normalise_order(order: str | int) -> str:
    if isinstance(order, bool) or not isinstance(order, (str, int)):
        raise ContinualLMError(f"order must be a name or number such as 1, '1' or 'order1', got {order!r}")
    return re.sub(r"[\s_\-]", "", str(order).lower()).replace("order", "")


def resolve_order(benchmark: str, order: str | int | None = None) -> list[str]:
    """The task names of ``order`` of ``benchmark`` ("1", 1, "order1" or an alias such as "sapt4").
    ``None`` means the benchmark's first order."""
    bench = get_benchmark(benchmark)
    if not bench.orders:
        raise ContinualLMError(
            f"benchmark {bench.name!r} has no predefined orders; the tasks are trained in the order of the "
            "stream file (--stream-file)"
        )
    if order is None:
        key = bench.default_order
    else:
        key = _normalise_order(order)
        key = bench.order_aliases.get(key, key)
        if key not in bench.orders:
            raise unknown_choice(f"{bench.name} order", str(order), bench.order_names())
    return list(bench.orders[key])


def canonical_order(benchmark: str, order: str | int | None = None) -> str | None:
    """The canonical name of ``order`` of ``benchmark`` ("order4" -> "4", "sapt4" -> "6"; None -> the first order);
    None for a benchmark without predefined orders (custom)."""
    bench = get_benchmark(benchmark)
    if not bench.orders:
        return None
    if order is None:
        return bench.default_order
    key = _normalise_order(order)
    key = bench.order_aliases.get(key, key)
    if key not in bench.orders:
        raise unknown_choice(f"{bench.name} order", str(order), bench.order_names())
    return key


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data folder: ``data_dir`` if given, else ``$CONTINUAL_LM_DATA``; it must exist."""
    if data_dir is not None and str(data_dir) != "":
        path, origin = Path(data_dir).expanduser(), "--data-dir"
    elif os.environ.get(DATA_ENV):
        path, origin = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        raise ContinualLMError(
            f"this benchmark needs its data: pass --data-dir or set {DATA_ENV} to the folder that contains "
            "CL_Benchmark/, SuperNI/ and/or TRACE/ (see docs/benchmarks.md)"
        )
    if not path.is_dir():
        raise ContinualLMError(f"data directory {path} (from {origin}) does not exist or is not a directory")
    return path


def read_task(
    benchmark: str,
    data_dir: str | Path | None,
    name: str,
    *,
    stream_file: str | Path | None = None,
    seed: int = 0,
) -> Task:
    """Read one task of ``benchmark`` by name (not subsampled). ``custom`` reads it from ``stream_file``;
    ``demo`` generates it with ``seed``."""
    bench = get_benchmark(benchmark)
    if bench.reader is None:
        if stream_file is None:
            raise ContinualLMError(f"benchmark {bench.name!r} needs a stream file (--stream-file)")
        tasks = {t.name: t for t in read_custom_stream(stream_file)}
        if name not in tasks:
            raise unknown_choice(f"task of stream file {stream_file}", name, tasks)
        return tasks[name]
    return bench.reader(None if data_dir is None else Path(data_dir), name, seed)


# ----------------------------------------------------------------------------------------------------------------
# Subsampling


def _check_cap(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContinualLMError(f"{name} must be a positive integer or None (no limit), got {value!r}")
    return value


def _subsample_split(examples: list, task: Task, split: str, cap: int | None, per_class: int | None, seed: int) -> list:
    rng = random.Random(stable_seed("subsample", seed, task.name, split))
    if per_class is not None and task.kind == CLASSIFICATION:
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            groups.setdefault(ex.target, []).append(i)
        chosen: list[int] = []
        for target in sorted(groups):
            idx = groups[target]
            rng.shuffle(idx)
            chosen.extend(idx[:per_class])
    else:
        chosen = list(range(len(examples)))
    rng.shuffle(chosen)
    if cap is not None:
        chosen = chosen[:cap]
    return [examples[i] for i in chosen]


def subsample(
    task: Task,
    *,
    max_train: int | None = None,
    max_test: int | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    seed: int = 0,
) -> Task:
    """A seeded subset of ``task`` in a seeded shuffled order. The draw depends only on (seed, task name, split), not
    on the stream order. Per-class caps apply to classification tasks (classes = targets) and are applied before the
    total caps. ``None`` = no limit (the split is still shuffled)."""
    max_train, max_test = _check_cap("max_train", max_train), _check_cap("max_test", max_test)
    max_train_per_class = _check_cap("max_train_per_class", max_train_per_class)
    max_test_per_class = _check_cap("max_test_per_class", max_test_per_class)
    return task.with_examples(
        train=_subsample_split(task.train, task, "train", max_train, max_train_per_class, seed),
        test=_subsample_split(task.test, task, "test", max_test, max_test_per_class, seed),
    )


# ----------------------------------------------------------------------------------------------------------------
# Streams


def load_stream(
    benchmark: str,
    order: str | int | None = None,
    *,
    data_dir: str | Path | None = None,
    stream_file: str | Path | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    seed: int = 0,
    task_names: list[str] | None = None,
) -> list[Task]:
    """The ordered, subsampled tasks of ``benchmark``'s ``order`` (default: its first order), or of ``task_names``
    when given (a user-chosen sequence of tasks of that benchmark)."""
    bench = get_benchmark(benchmark)
    if task_names is not None:
        if isinstance(task_names, str) or not task_names:
            raise ContinualLMError(f"task_names must be a non-empty list of task names, got {task_names!r}")
    if bench.reader is None:  # custom
        if stream_file is None:
            raise ContinualLMError(
                "benchmark 'custom' needs a stream file: pass --stream-file my_stream.yaml (see docs/benchmarks.md)"
            )
        if order is not None:
            raise ContinualLMError(
                f"benchmark 'custom' has no orders (got order {order!r}); the tasks are trained in the order of "
                f"{stream_file}, or in the order of the task names given"
            )
        tasks = read_custom_stream(stream_file)
        if task_names is not None:
            by_name = {t.name: t for t in tasks}
            for name in task_names:
                if name not in by_name:
                    raise unknown_choice(f"task of stream file {stream_file}", name, by_name)
            tasks = [by_name[name] for name in task_names]
    else:
        if stream_file is not None:
            raise ContinualLMError(
                f"a stream file is only used with benchmark 'custom', not {bench.name!r}; drop --stream-file or "
                "use --benchmark custom"
            )
        names = list(task_names) if task_names is not None else resolve_order(bench.name, order)
        data_path = resolve_data_dir(data_dir) if bench.needs_data_dir else None
        tasks = [bench.reader(data_path, name, seed) for name in names]
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise ContinualLMError(f"task {t.name!r} appears twice in the stream; each task may appear once")
        seen.add(t.name)
    return [
        subsample(
            t, max_train=max_train, max_test=max_test, max_train_per_class=max_train_per_class,
            max_test_per_class=max_test_per_class, seed=seed,
        )
        for t in tasks
    ]


__all__ = [
    "BENCHMARKS", "Benchmark", "DATA_ENV", "DEMO_ORDERS", "LONG_ORDERS", "LONG_ORDER_ALIASES", "STANDARD_ORDERS",
    "SUPERNI_ORDERS", "TRACE_ORDERS", "canonical_order", "demo_tasks", "get_benchmark", "list_benchmarks",
    "load_stream", "read_task",
    "resolve_data_dir", "resolve_order", "subsample",
]
