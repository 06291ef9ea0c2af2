"""Unseen tasks (--unseen-tasks, or ``Stream.unseen``): tasks the run never trains, scored zero-shot on the base
model before the first phase and on the final model after the last, into results.json["unseen"] and
predictions/unseen_base.json, predictions/unseen_final.json. Each is measured once (a resumed run keeps it)."""
from __future__ import annotations

from .base import Callback
from .predictions import write_predictions


class UnseenTasks(Callback):
    def on_run_start(self, run):
        self._measure(run, "base_model", "unseen_base", "zero-shot base model")

    def on_stream_end(self, run):
        self._measure(run, "final", "unseen_final", "unseen after the stream")

    def _measure(self, run, key: str, file: str, label: str) -> None:
        unseen = run.stream.unseen
        if not unseen:
            return
        section = run.state["sections"].setdefault("unseen", {"tasks": [t.name for t in unseen],
                                                               "metric_per_task": {t.name: t.metric for t in unseen}})
        if key in section:
            return
        evaluation = run.evaluate(unseen, [-1] * len(unseen), label)
        section[key] = {t.name: score for t, score in zip(unseen, evaluation.scores)}
        write_predictions(run, file, evaluation)
        run.save_state()
        run.accelerator.wait_for_everyone()
