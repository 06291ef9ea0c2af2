"""Progress: a tqdm bar per phase for interactive use (--progress), and one line per phase and per run through
Python's ``logging`` (logger "continual_lm"; the CLI shows its INFO lines), so that a run with --no-progress is not
silent until it ends:

    phase 2/5 animal_class: trained in 3.1 s (24 steps, loss 0.412), evaluated in 1.2 s: sentiment 90.62, ...
"""
from __future__ import annotations

import logging

from .base import Callback

logger = logging.getLogger("continual_lm")


class ProgressBar(Callback):
    def __init__(self):
        self.bar = None
        self.ema: float | None = None

    def on_train_begin(self, run, phase, steps):
        from tqdm.auto import tqdm

        names = " + ".join(run.tasks[i].name for i in phase.train_tasks)
        self.bar = tqdm(total=steps, desc=f"train {phase.row + 1}/{len(run.tasks)} {names}"[:60], unit="step",
                        disable=not (run.config.progress and run.is_main))
        self.ema = None

    def on_step(self, run, phase, logs):
        loss = logs["loss"]
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.ema:.3f}", samples_s=f"{logs['samples_per_s']:.1f}")

    def on_train_end(self, run, phase):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LogSummary(Callback):
    def __init__(self):
        self.loss: float | None = None

    def on_run_start(self, run):
        finished = sum(bool(p.get("trained")) for p in run.state["phases"].values())
        if run.is_main:
            logger.info("%s: %s on %s (%d tasks)%s", run.run_dir.path, run.config.method, run.stream.benchmark,
                        len(run.tasks), f", resuming after {finished} trained phase(s)" if finished else "")

    def on_train_begin(self, run, phase, steps):
        self.loss = None

    def on_step(self, run, phase, logs):
        self.loss = logs["loss"]

    def _trained(self, run, phase) -> str:
        done = run.state["phases"].get(str(phase.row), {})
        names = " + ".join(run.tasks[i].name for i in phase.train_tasks)
        steps = f" ({done['steps']} steps, loss {self.loss:.3f})" if self.loss is not None and "steps" in done else ""
        return f"phase {phase.row + 1}/{len(run.tasks)} {names}: trained in {done.get('train_s', 0.0):.1f} s{steps}"

    def on_train_end(self, run, phase):
        if run.is_main and not run.evaluates(phase):
            logger.info("%s, not evaluated (--eval-every %s)", self._trained(run, phase), run.config.eval_every)

    def on_phase_evaluated(self, run, phase, evaluation):
        if run.is_main:
            scores = ", ".join(f"{t.name} {s:.2f}" for t, s in zip(evaluation.tasks, evaluation.scores))
            logger.info("%s, evaluated in %.1f s: %s", self._trained(run, phase), evaluation.seconds, scores)

    def on_run_end(self, run, results):
        if run.is_main:
            metrics = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in results["metrics"].items())
            logger.info("%s: %s; results in %s", run.config.method, metrics, run.run_dir.results_path)
