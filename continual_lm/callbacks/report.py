"""The run's own report (report.md, the accuracy-matrix heatmap and task trajectories: eval/report.py) and the
method's analyses (``Method.on_run_end``: its figures and JSON, e.g. attention heatmaps, which the report embeds),
written by the main process."""
from __future__ import annotations

from .base import Callback


class MethodAnalyses(Callback):
    def on_stream_end(self, run):
        if run.is_main:
            run.method.on_run_end(run.model)


class RunReport(Callback):
    def on_run_end(self, run, results):
        if run.is_main:
            from ..eval import report

            report.write_run_report(run.run_dir.path, results)
