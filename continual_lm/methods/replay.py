"""Replay: a memory of real samples of earlier tasks, mixed into the training data of later tasks (a plugin).

After task t a seeded sample of its training set is stored: ``count`` examples if given, otherwise
max(1, round(fraction * |train_t|)) (capped at |train_t|). Training task t uses its own data plus the memory of
tasks < t; the loop shuffles the union. The memory goes into the checkpoint (JSON) so a resumed run replays the
same samples. Use as ``seqlora+replay``, ``seqft+replay``, ``inclora+replay``, ``seqlora+replay+migu``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..data.tasks import Example
from .option_checks import check_fields, none_means
from .base import Method, TrainExample


@dataclass
class ReplayOptions:
    fraction: float = 0.02  # share of each task's training set kept in memory
    count: int | None = none_means("fraction of each task's training set")  # a fixed number per task

    def validate(self):
        check_fields("replay", self, fraction="a number in (0, 1]", count="an integer >= 1 or None")

    def memory_size(self, task_size: int) -> int:
        wanted = self.count if self.count is not None else max(1, round(self.fraction * task_size))
        return min(wanted, task_size)


class Replay(Method):
    name = "replay"
    description = "plugin: replay a stored sample of earlier tasks' training data"
    Options = ReplayOptions
    is_plugin = True
    uses_replay = True
    uses_task_id_at_train = True  # a memory per finished task
    uses_task_id_at_test = False
    uses_pseudo_samples = False

    def __init__(self, config, options=None):
        super().__init__(config, options)
        self.memory: dict[int, list[Example]] = {}  # task index -> its stored samples

    def train_examples(self, task_index, examples):
        replayed = [TrainExample(t, ex) for t in sorted(self.memory) if t < task_index for ex in self.memory[t]]
        return examples + replayed

    def after_task(self, model, task_index, task, examples):
        own = self.tasks[task_index].train
        rng = random.Random(self.config.seed * 1_000_003 + task_index)
        chosen = sorted(rng.sample(range(len(own)), self.options.memory_size(len(own))))
        self.memory[task_index] = [own[i] for i in chosen]

    def extra_state(self):
        entries = [{"task_index": t, "input": ex.input, "target": ex.target, "references": list(ex.references)}
                   for t in sorted(self.memory) for ex in self.memory[t]]
        return {}, {"memory": entries}

    def load_extra_state(self, tensors, meta):
        self.memory = {}
        for entry in meta.get("memory", []):
            example = Example(entry["input"], entry["target"], tuple(entry["references"]))
            self.memory.setdefault(int(entry["task_index"]), []).append(example)
