"""Evaluation of a model on tasks, scored by the kind of each task.

Labelled tasks (classification, generation) are answered by greedy decoding (eval/generate.py: the test inputs of
all of them share batches) and scored by their metric (eval/scores.py); each example is recorded with its input,
references, prediction and score. A corpus task of continual pre-training is scored by its end task
(train/end_task.py): a copy of the model fine-tuned on it; its accuracy is the task's score and
{"accuracy", "macro_f1"} its record.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from ..data.tasks import CORPUS, Task


@dataclass
class Evaluation:
    """One evaluation: ``scores[k]`` of ``tasks[k]`` (0..100, 4 decimals), evaluated as stream task
    ``indices[k]`` (-1: not a task of the stream), and ``records[task name]``: a list of {"input", "references",
    "prediction", "score"} per test example, or {"accuracy", "macro_f1"} for a corpus task."""

    tasks: list[Task]
    indices: list[int]
    scores: list[float]
    records: dict[str, Any]
    seconds: float = 0.0

    def macro_f1(self, task: Task) -> float | None:
        """The end task's macro-F1 of a corpus task evaluated here, else None."""
        record = self.records.get(task.name)
        return record["macro_f1"] if task.kind == CORPUS and isinstance(record, dict) else None


def evaluate_tasks(model, method, collator, tokenizer, tasks: list[Task], indices: list[int], *, batch_size: int,
                   max_length: int, seed: int, accelerator=None, progress: bool = False,
                   label: str = "eval") -> Evaluation:
    """Score ``tasks`` (stream positions ``indices``) with the model as it is now."""
    from ..train.end_task import corpus_task_scores
    from .generate import predict_requests
    from .scores import score_task, task_example_scores

    start = time.perf_counter()
    generating = [(task, j) for task, j in zip(tasks, indices) if task.kind != CORPUS]
    requests = [(task, j, e.input) for task, j in generating for e in task.test]
    records: dict[str, Any] = {}
    generated: dict[str, float] = {}
    with accelerator.autocast() if accelerator is not None else nullcontext():
        texts = predict_requests(model, method, collator, requests, batch_size, accelerator, progress,
                                 desc=f"eval {label}")
        for task, _ in generating:
            predictions, texts = texts[:len(task.test)], texts[len(task.test):]
            records[task.name] = [
                {"input": e.input, "references": list(e.refs()), "prediction": p, "score": round(s, 4)}
                for e, p, s in zip(task.test, predictions, task_example_scores(task, predictions))]
            generated[task.name] = round(score_task(task, predictions), 4)
        scores = []
        for task in tasks:
            if task.kind == CORPUS:  # its end task: accuracy is the score, both scores its record
                records[task.name] = corpus_task_scores(model, tokenizer, task, max_length=max_length, seed=seed)
                scores.append(records[task.name]["accuracy"])
            else:
                scores.append(generated[task.name])
    return Evaluation(tasks, list(indices), scores, records, time.perf_counter() - start)
