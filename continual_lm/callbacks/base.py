"""The callback protocol: what a run records beyond its training and evaluation (after transformers'
``TrainerCallback`` and Avalanche's evaluation plugins and loggers).

The loop (train/loop.py) trains and evaluates; at each event it calls every callback with the run itself (the
``ContinualRunner``: ``config``, ``stream``, ``tasks``, ``model``, ``method``, ``accelerator``, ``is_main``,
``run_dir``, ``state``, ``global_step``, ``evaluate(...)``, ``evaluates(phase)``, ``save_state()``). Events, in
the order of a run:

    on_run_start(run)                       the directory is locked, the model is the base model; before phase 1
    on_train_begin(run, phase, steps)       a phase starts training (``steps`` optimizer steps)
    on_step(run, phase, logs)               after each optimizer step: {"loss", "lr", "samples_per_s"}
    on_train_end(run, phase)                the phase is trained and checkpointed (state.json says so)
    on_phase_evaluated(run, phase, evaluation)   the phase's evaluation (eval/evaluate.py ``Evaluation``); called
                                            before state.json records it, so that a run killed here evaluates again
    on_stream_end(run)                      every phase is done; the final model is in place
    on_run_end(run, results)                results.json is written

Every process calls every callback (so that a callback may evaluate, which shards across processes); only the
main process (``run.is_main``) may write. A callback that measures something a resumed run must not measure again
keeps it in ``run.state`` (saved with ``run.save_state()``); what it puts under ``run.state["sections"][KEY]`` becomes
``results.json[KEY]``. Phases finished before a resume are not replayed: their events are not called again.
"""
from __future__ import annotations

from typing import Any

from ..errors import ContinualLMError


class Callback:
    """Override the events you need; each does nothing by default."""

    def on_run_start(self, run) -> None:
        pass

    def on_train_begin(self, run, phase, steps: int) -> None:
        pass

    def on_step(self, run, phase, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, run, phase) -> None:
        pass

    def on_phase_evaluated(self, run, phase, evaluation) -> None:
        pass

    def on_stream_end(self, run) -> None:
        pass

    def on_run_end(self, run, results: dict[str, Any]) -> None:
        pass


class CallbackList(Callback):
    """Callbacks called in order, each event of each callback."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise ContinualLMError(f"callbacks: {callback!r} is not a continual_lm.Callback (subclass it and "
                                       f"override the events you need)")

    def on_run_start(self, run):
        for callback in self.callbacks:
            callback.on_run_start(run)

    def on_train_begin(self, run, phase, steps):
        for callback in self.callbacks:
            callback.on_train_begin(run, phase, steps)

    def on_step(self, run, phase, logs):
        for callback in self.callbacks:
            callback.on_step(run, phase, logs)

    def on_train_end(self, run, phase):
        for callback in self.callbacks:
            callback.on_train_end(run, phase)

    def on_phase_evaluated(self, run, phase, evaluation):
        for callback in self.callbacks:
            callback.on_phase_evaluated(run, phase, evaluation)

    def on_stream_end(self, run):
        for callback in self.callbacks:
            callback.on_stream_end(run)

    def on_run_end(self, run, results):
        for callback in self.callbacks:
            callback.on_run_end(run, results)
