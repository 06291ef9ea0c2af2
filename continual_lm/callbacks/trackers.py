"""Experiment trackers through accelerate (--report-to tensorboard | wandb).

Logged: the resolved configuration (every option, LoRA and method options included, as dotted keys), the
training loss, learning rate and phase at every optimizer step, every evaluation's per-task scores
(``eval/<task>``), and at the end the CL metrics (``cl/AP`` ...) and unseen-task scores. Everything is logged at
the run's global optimizer step, which only grows (also across a resume: each phase's steps are in state.json), so
W&B, which drops a step lower than one it already has, keeps every metric. The project is
``--tracker-project`` (default continual_lm), the run's name ``--tracker-run-name`` (default: the run directory's
name); files go under RUN_DIR/tracking/.
"""
from __future__ import annotations

import json
from typing import Any

from .base import Callback

DEFAULT_PROJECT = "continual_lm"


def tracker_config(config) -> dict[str, Any]:
    """The resolved configuration as flat scalar values ("lora.r": 8, "method_options.amlora.l1": 0.0; lists and
    None as JSON text), which both TensorBoard's hparams and W&B accept."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix[:-1]] = value
        else:
            flat[prefix[:-1]] = json.dumps(value)

    walk("", config.to_dict())
    return flat


class Trackers(Callback):
    @staticmethod
    def _on(run) -> bool:
        return run.config.report_to != "none"

    def on_run_start(self, run):
        if not self._on(run):
            return
        config, folder = run.config, run.run_dir.path / "tracking"
        folder.mkdir(parents=True, exist_ok=True)
        run.accelerator.init_trackers(config.tracker_project or DEFAULT_PROJECT, config=tracker_config(config),
                                      init_kwargs={"wandb": {"name": config.tracker_run_name or run.run_dir.path.name,
                                                             "dir": str(folder)}})

    def on_step(self, run, phase, logs):
        if self._on(run):
            run.accelerator.log({"train/loss": logs["loss"], "train/lr": logs["lr"], "train/phase": phase.row},
                                step=run.global_step)

    def on_phase_evaluated(self, run, phase, evaluation):
        if self._on(run):
            values = {f"eval/{t.name}": score for t, score in zip(evaluation.tasks, evaluation.scores)}
            run.accelerator.log({**values, "eval/phase": phase.row}, step=run.global_step)

    def on_run_end(self, run, results):
        if not self._on(run):
            return
        values = {f"cl/{k}": v for k, v in results["metrics"].items() if v is not None}
        values.update({f"unseen/{k}": v for k, v in ((results.get("unseen") or {}).get("final") or {}).items()})
        run.accelerator.log(values, step=run.global_step)
        run.accelerator.end_training()
