"""Prediction files: each evaluation's records, per task, in the run directory.

    predictions/after_phase_XX.json   {task: [{"input", "references", "prediction", "score"}, ...]}
                                      (a corpus task of continual pre-training: {"accuracy", "macro_f1"})
    predictions/unseen_base.json, predictions/unseen_final.json   (callbacks/unseen.py)
"""
from __future__ import annotations

from ..io_utils import atomic_write_json
from .base import Callback


def write_predictions(run, name: str, evaluation) -> None:
    """``evaluation.records`` into predictions/NAME.json (main process only)."""
    if run.is_main:
        atomic_write_json(run.run_dir.predictions_path(name), evaluation.records)


class PredictionFiles(Callback):
    def on_phase_evaluated(self, run, phase, evaluation):
        write_predictions(run, f"after_phase_{phase.row:02d}", evaluation)
