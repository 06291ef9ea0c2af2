"""Reports of runs: markdown (one run, or a comparison of runs) and PNG figures.

Every function takes the ``results.json`` dict of DESIGN.md (keys benchmark, order, method, model, seed, tasks,
metric_per_task, matrix, single_task, metrics, timing, versions). Figures are drawn on a bare Agg canvas
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), so pyplot and the user's backend are never touched.
Files are written atomically: a temp file in the same directory, flushed, fsynced, then ``os.replace``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from continual_lm.eval.cl_metrics import METRIC_NAMES, cl_metrics
from continual_lm.io_utils import atomic_write_bytes as _atomic_write_bytes
from continual_lm.io_utils import atomic_write_text as _atomic_write_text

from .tables import PROTOCOL_LEGEND, protocol_flags  # noqa: F401 (re-exported: the CLI's list)
from .tables import cell as _cell
from .tables import fmt as _fmt
from .tables import table as _table

MATRIX_PNG = "accuracy_matrix.png"
TRAJECTORY_PNG = "task_trajectories.png"
REPORT_MD = "report.md"


def results_problem(results) -> str | None:
    """What makes ``results`` unusable as a results.json (docs/metrics.md has the contract), or None."""
    if not isinstance(results, dict):
        return f"expected a JSON object, got {type(results).__name__}"
    matrix = results.get("matrix")
    if not isinstance(matrix, list) or not matrix or not all(isinstance(row, list) for row in matrix):
        return "'matrix' must be a non-empty list of rows"
    if any(len(row) != len(matrix) for row in matrix) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for row in matrix for v in row):
        return "'matrix' must be square, of numbers or null"
    tasks = results.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or len(tasks) != len(matrix)
                              or not all(isinstance(t, str) for t in tasks)):
        return "'tasks' must list one name per matrix row"
    for key, kind in (("metrics", dict), ("method", str), ("timing", dict)):
        if key in results and not isinstance(results[key], kind):
            return f"'{key}' must be a {'mapping' if kind is dict else 'string'}"
    return None


def _tasks(results: dict) -> list[str]:
    matrix = results.get("matrix") or []
    tasks = results.get("tasks")
    return list(tasks) if tasks else [f"task {j + 1}" for j in range(len(matrix))]


def _single_list(results: dict) -> list | None:
    single = results.get("single_task")
    if single is None:
        return None
    if isinstance(single, dict):
        return [single.get(t) for t in _tasks(results)]
    return list(single)


def final_scores(results: dict) -> list:
    """Final score of each task: results.json's ``final_scores``, or (older results) its score in the last matrix
    row that evaluated it (eval/results.py), which is the diagonal for the single-task reference run."""
    matrix = results.get("matrix") or []
    if not matrix:
        return []
    if isinstance(results.get("final_scores"), dict):
        return [results["final_scores"].get(t) for t in _tasks(results)]
    from .results import final_scores as last_evaluated

    return last_evaluated(matrix)


def _metrics(results: dict) -> dict:
    metrics = results.get("metrics")
    if metrics is None:  # an older or partial results dict: compute them the one way they are defined
        metrics = cl_metrics(results["matrix"], _single_list(results), final_row=final_scores(results))
    return metrics


def _label(results: dict) -> str:
    return str(results.get("method") or "?")


def _unique_labels(results_list: Sequence[dict]) -> list[str]:
    """Method names, made distinct where runs share one: by what differs among them (benchmark, order, model,
    seed), then by a counter."""
    base = [_label(r) for r in results_list]
    labels = []
    for lab, r in zip(base, results_list):
        group = [x for x, b in zip(results_list, base) if b == lab]
        extra = [f"{k}={r.get(k)}" for k in ("benchmark", "order", "model", "seed")
                 if len(group) > 1 and len({str(x.get(k)) for x in group}) > 1]
        labels.append(f"{lab} ({', '.join(extra)})" if extra else lab)
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 else f"{lab} #{seen[lab]}")
    return out


# ---------------------------------------------------------------------------------------------- markdown
def matrix_markdown(results: dict, key: str = "matrix") -> str:
    """A score matrix (``results[key]``) as a markdown table: rows "after <task>", columns the tasks, 1 decimal,
    "–" for null."""
    tasks = _tasks(results)
    rows = [[_cell(f"after {tasks[i]}")] + [_fmt(v, 1) for v in row] for i, row in enumerate(results[key])]
    return _table(["", *(_cell(t) for t in tasks)], rows)


def _figures(run_dir) -> list[str]:
    if run_dir is None:
        return []
    run_dir = Path(run_dir)
    figs = [name for name in (MATRIX_PNG, TRAJECTORY_PNG) if (run_dir / name).is_file()]
    figs += sorted(p.name for p in run_dir.glob("*_heatmap.png") if p.is_file() and p.name != MATRIX_PNG)
    return figs


def run_report_markdown(results: dict, run_dir=None) -> str:
    """The markdown report of one run. With ``run_dir``, its figures (the accuracy matrix heatmap and any
    ``*_heatmap.png``) are embedded under "## Figures"."""
    tasks = _tasks(results)
    method = results.get("method")
    lines = [f"# Run report: {_cell(method)} on {_cell(results.get('benchmark'))}", ""]
    for key in ("benchmark", "order", "method", "model", "seed"):
        lines.append(f"- **{key}**: {_cell(results.get(key))}")
    lines += ["", "## Metrics", ""]
    metrics = _metrics(results)
    lines.append(_table(list(METRIC_NAMES), [[_fmt(metrics.get(k), 2) for k in METRIC_NAMES]], 0))
    lines += ["", "Scores are on a 0..100 scale; definitions in docs/metrics.md."]
    if metrics.get("FWT") is None and _single_list(results) is None:
        lines += ["", "FWT is – because no single-task reference scores were given "
                     "(`--single-task-from RUN_DIR`)."]
    for name, why in (results.get("metrics_notes") or {}).items():
        lines += ["", f"{name} is – because it {why}."]
    matrix = results.get("matrix") or []
    if matrix and final_scores(results) != list(matrix[-1]):
        lines += ["", "Each task's final score is its score in the last phase that evaluated it, which here is not "
                  "always the last row (the single-task reference run: the diagonal)."]

    lines += ["", "## Accuracy matrix", "", "Row i: after training task i; column j: score on task j.", "",
              matrix_markdown(results)]
    if results.get("matrix_macro_f1"):  # continual pre-training: the end tasks' macro-F1 beside their accuracy
        f1_metrics = results.get("metrics_macro_f1") or {}
        lines += ["", "## End-task macro-F1 matrix", "", "Same layout; corpus tasks' end tasks scored by macro-F1 "
                  "(docs/continual_pretraining.md).", "", matrix_markdown(results, "matrix_macro_f1"), "",
                  _table(list(METRIC_NAMES), [[_fmt(f1_metrics.get(k), 2) for k in METRIC_NAMES]], 0)]

    lines += ["", "## Final scores", ""]
    per_task = results.get("metric_per_task") or {}
    single = _single_list(results)
    header = ["task", "metric", "final"] + (["single-task"] if single is not None else [])
    rows = []
    for j, (task, v) in enumerate(zip(tasks, final_scores(results))):
        row = [_cell(task), _cell(per_task.get(task)), _fmt(v, 2)]
        if single is not None:
            row.append(_fmt(single[j] if j < len(single) else None, 2))
        rows.append(row)
    lines.append(_table(header, rows, 2))

    if results.get("unseen"):
        lines += ["", "## Unseen tasks", "", unseen_markdown([results])]
    if results.get("general"):
        from .general import general_markdown

        lines += ["", "## General abilities", "", general_markdown(results["general"])]
    timing = results.get("timing") or {}
    lines += ["", "## Timing", ""]
    train_s, eval_s = timing.get("train_s"), timing.get("eval_s")
    lines.append(_table(["train (s)", "eval (s)", "total (s)"],
                        [[_fmt(train_s, 1), _fmt(eval_s, 1),
                          _fmt(None if train_s is None or eval_s is None else train_s + eval_s, 1)]], 0))

    versions = results.get("versions") or {}
    if versions:
        lines += ["", "## Versions", ""]
        lines += [f"- {_cell(k)}: {_cell(v)}" for k, v in versions.items()]

    figures = _figures(run_dir)
    if figures:
        lines += ["", "## Figures", ""]
        for name in figures:
            lines += [f"![{name[:-4]}]({name})", ""]
        lines.pop()
    return "\n".join(lines) + "\n"


def unseen_markdown(results_list: Sequence[dict]) -> str:
    """Zero-shot scores on the unseen tasks after the stream, one row per run, and the base model beside them."""
    with_unseen = [r for r in results_list if r.get("unseen")]
    if not with_unseen:
        return ""
    tasks = list(dict.fromkeys(t for r in with_unseen for t in r["unseen"]["tasks"]))

    def row(label, scores):
        values = [scores.get(t) for t in tasks]
        present = [v for v in values if v is not None]
        return [_cell(label), *(_fmt(v, 2) for v in values), _fmt(sum(present) / len(present) if present else None, 2)]

    labels = _unique_labels(with_unseen)
    rows = [row(label, r["unseen"]["final"]) for label, r in zip(labels, with_unseen)]
    rows.append(row("zero-shot base model", with_unseen[0]["unseen"]["base_model"]))
    return "Unseen tasks (never trained; zero-shot after the stream):\n\n" + _table(
        ["run", *(_cell(t) for t in tasks), "avg"], rows)


def comparison_markdown(results_list: Sequence[dict]) -> str:
    """One table, one row per run: method, its declared protocol (flags explained under the table), AP, F.Ra, FWT,
    BWT, then the final score of each task (the union of the runs' tasks, in first-seen order; "–" where a run
    lacks a task). Benchmark, order, model and seed get a column each when the runs differ in them."""
    if not results_list:
        raise ValueError("comparison_markdown needs at least one results dict")
    varying = [k for k in ("benchmark", "order", "model", "seed") if len({str(r.get(k)) for r in results_list}) > 1]
    all_tasks: list[str] = []
    for r in results_list:
        all_tasks += [t for t in _tasks(r) if t not in all_tasks]
    header = ["method", "protocol", *varying, *METRIC_NAMES, *(_cell(t) for t in all_tasks)]
    rows = []
    for r in results_list:
        metrics = _metrics(r)
        final = dict(zip(_tasks(r), final_scores(r)))
        rows.append([_cell(_label(r)), protocol_flags(r.get("protocol")), *(_cell(r.get(k)) for k in varying),
                     *(_fmt(metrics.get(k), 2) for k in METRIC_NAMES),
                     *(_fmt(final.get(t), 2) for t in all_tasks)])
    table = _table(header, rows, 2 + len(varying)) + f"\n\nProtocol: {PROTOCOL_LEGEND}."
    unseen = unseen_markdown(results_list)
    return f"{table}\n\n{unseen}" if unseen else table


# ------------------------------------------------------------------------------------------------ figures
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return _atomic_write_bytes(path, buf.getvalue())


def plot_fraction_heatmap(matrix: Sequence[Sequence[float]], path, *, rows: Sequence[str], columns: Sequence[str],
                          xlabel: str, ylabel: str, title: str, colorbar_label: str | None = None) -> Path:
    """A PNG heatmap of values in 0..1 (attention weights, selection frequencies, overlaps, confusion rates), cells
    annotated when there are at most 16 columns. The one plot behind the methods' ``*_heatmap.png`` insights."""
    fig = _new_figure(max(4.0, 0.55 * len(columns) + 2.5), max(3.0, 0.5 * len(rows) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(columns) <= 16:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label=colorbar_label)
    ax.set_title(title, fontsize=9)
    return _save_png(fig, path)


def plot_matrix_heatmap(results: dict, path) -> Path:
    """A PNG heatmap of the accuracy matrix (cells annotated, null cells grey, task names on the axes)."""
    import numpy as np
    from matplotlib import colormaps

    tasks = _tasks(results)
    matrix = results["matrix"]
    t = len(matrix)
    values = np.ma.masked_invalid(np.array([[np.nan if v is None else float(v) for v in row] for row in matrix],
                                           dtype=float).reshape(t, t))
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    side = max(4.0, 0.9 * t + 2.5)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap=cmap, vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="score (0..100)")
    ax.set_xticks(range(t), labels=tasks, rotation=45, ha="right")
    ax.set_yticks(range(t), labels=[f"after {name}" for name in tasks])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("trained up to")
    fontsize = max(5, 11 - t // 3)
    for i in range(t):
        for j in range(t):
            v = matrix[i][j]
            if v is not None:
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if v > 60 else "white")
    title = f"Accuracy matrix: {results.get('method', '?')}"
    if results.get("benchmark"):
        title += f" on {results['benchmark']}" + (f" ({results['order']})" if results.get("order") else "")
    ax.set_title(title)
    return _save_png(fig, path)


def plot_task_trajectories(results: dict, path) -> Path:
    """One line per task: its score after each training step of the stream (the columns of the matrix)."""
    tasks = _tasks(results)
    matrix = results["matrix"]
    fig = _new_figure(max(5.0, 0.7 * len(tasks) + 3.0), 4.5)
    ax = fig.add_subplot()
    for j, name in enumerate(tasks):
        points = [(i + 1, row[j]) for i, row in enumerate(matrix) if row[j] is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xticks(range(1, len(tasks) + 1), labels=[f"{i + 1}\n{t}" for i, t in enumerate(tasks)], fontsize=7)
    ax.set_xlabel("after training task")
    ax.set_ylabel("score (0..100)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Per-task trajectories: {results.get('method', '?')}")
    ax.legend(fontsize=7, loc="best")
    return _save_png(fig, path)


def plot_comparison_bars(results_list: Sequence[dict], path) -> Path:
    """A grouped bar chart PNG of AP and BWT per run (a missing value gets no bar and a "–" label)."""
    if not results_list:
        raise ValueError("plot_comparison_bars needs at least one results dict")
    labels = _unique_labels(results_list)
    series = [("AP", [_metrics(r).get("AP") for r in results_list]),
              ("BWT", [_metrics(r).get("BWT") for r in results_list])]
    n = len(results_list)
    width = 0.38
    fig = _new_figure(max(5.0, 1.1 * n + 2.0), 4.5)
    ax = fig.add_subplot()
    for k, (name, vals) in enumerate(series):
        xs = [x + (k - 0.5) * width for x in range(n)]
        bars = ax.bar(xs, [0.0 if v is None else v for v in vals], width, label=name)
        for x, bar, v in zip(xs, bars, vals):
            if v is None:
                bar.set_visible(False)
            ax.annotate(_fmt(v, 1), (x, 0.0 if v is None else v), ha="center",
                        va="bottom" if (v or 0) >= 0 else "top", fontsize=8,
                        xytext=(0, 2 if (v or 0) >= 0 else -2), textcoords="offset points")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(n), labels=labels, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_ylabel("score (0..100)")
    ax.set_title("AP and BWT per method")
    ax.legend()
    ax.margins(y=0.15)
    return _save_png(fig, path)


def write_run_report(run_dir, results: dict) -> None:
    """Write ``accuracy_matrix.png`` and ``report.md`` (embedding it and any ``*_heatmap.png``) into ``run_dir``,
    each atomically."""
    run_dir = Path(run_dir)
    plot_matrix_heatmap(results, run_dir / MATRIX_PNG)
    plot_task_trajectories(results, run_dir / TRAJECTORY_PNG)
    _atomic_write_text(run_dir / REPORT_MD, run_report_markdown(results, run_dir=run_dir))
