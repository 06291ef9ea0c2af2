"""General abilities (--general-tasks, eval/general.py): lm-eval scores of the base model before the first phase
and of the final model after the last, into results.json["general"]. Each is measured once (a resumed run keeps it),
by the main process only (lm-eval scores a model object in a single process)."""
from __future__ import annotations

from .base import Callback


class GeneralAbilities(Callback):
    def on_run_start(self, run):
        self._measure(run, "before")

    def on_stream_end(self, run):
        self._measure(run, "after")

    def _measure(self, run, when: str) -> None:
        config = run.config
        if not config.general_tasks or when in run.state["sections"].get("general", {}):
            return
        if run.is_main:
            from ..eval.general import METRIC, check_usable, evaluate_general

            check_usable(run.method)
            scores = evaluate_general(run.model, run.backbone.tokenizer, list(config.general_tasks),
                                      task_dir=config.general_task_dir, limit=config.general_limit,
                                      batch_size=config.eval_batch_size, is_seq2seq=run.backbone.is_seq2seq)
            general = run.state["sections"].setdefault("general", {"tasks": list(config.general_tasks),
                                                                   "metric": METRIC})
            general[when] = scores
            run.save_state()
        run.accelerator.wait_for_everyone()
