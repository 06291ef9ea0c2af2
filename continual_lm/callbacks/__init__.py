"""Callbacks: everything a run records beyond its training and evaluation (the protocol: base.py).

``default_callbacks()`` are the shipped ones, which the CLI and ``continual_lm.run`` attach to every run (each does
nothing when its option is off); a caller's own callbacks come after them:

    Trackers         --report-to tensorboard | wandb                      trackers.py
    ProgressBar      tqdm bar per phase (--progress)                      progress.py
    PredictionFiles  predictions/after_phase_XX.json                      predictions.py
    UnseenTasks      --unseen-tasks: results.json["unseen"]               unseen.py
    GeneralAbilities --general-tasks (lm-eval): results.json["general"]   general.py
    MethodAnalyses   Method.on_run_end: the method's figures              report.py
    RunReport        report.md and its figures                            report.py
    LogSummary       one logging line per phase and per run ("continual_lm" logger)   progress.py
"""
from __future__ import annotations

from .base import Callback, CallbackList


def default_callbacks() -> list[Callback]:
    from .general import GeneralAbilities
    from .predictions import PredictionFiles
    from .progress import LogSummary, ProgressBar
    from .report import MethodAnalyses, RunReport
    from .trackers import Trackers
    from .unseen import UnseenTasks

    return [Trackers(), ProgressBar(), PredictionFiles(), UnseenTasks(), GeneralAbilities(), MethodAnalyses(),
            RunReport(), LogSummary()]


__all__ = ["Callback", "CallbackList", "default_callbacks"]
