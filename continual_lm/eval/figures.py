"""The figures of run reports and comparisons, as PNG files (readable from 3 to 20 tasks and for dozens of runs).

Figures are drawn on a bare Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), so pyplot and the
user's backend are never touched, and written atomically (``io_utils.atomic_write_bytes``). Every colour bar says
what its colours measure; score axes name the metric of each task (accuracy, Rouge-L, ...), not "accuracy" for all.
Each function takes the ``results.json`` dict(s) of docs/metrics.md.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

from ..io_utils import atomic_write_bytes

# How a metric of results.json "metric_per_task" is named in figures and tables.
METRIC_LABELS = {"accuracy": "accuracy", "rougeL": "Rouge-L", "edit_sim": "edit similarity", "sari": "SARI"}


def metric_label(metric: str | None) -> str:
    return METRIC_LABELS.get(metric or "", metric or "score")


def score_name(results: dict) -> str:
    """What the matrix of a run holds: "Accuracy" when every task is scored by accuracy, "Rouge-L" when every task
    by Rouge-L, ..., "Score" when the tasks use different metrics (each column then names its own)."""
    metrics = set((results.get("metric_per_task") or {}).values())
    if len(metrics) == 1:
        label = metric_label(metrics.pop())
        return label[0].upper() + label[1:]
    return "Score"


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_png(fig, path) -> Path:
    return atomic_write_bytes(path, png_bytes(fig))


def _tasks(results: dict) -> list[str]:
    tasks = results.get("tasks")
    return list(tasks) if tasks else [f"task {j + 1}" for j in range(len(results.get("matrix") or []))]


def _run_title(results: dict) -> str:
    title = str(results.get("method") or "?")
    if results.get("benchmark"):
        title += f" on {results['benchmark']}" + (f" (order {results['order']})" if results.get("order") else "")
    return title


def _column_labels(results: dict) -> list[str]:
    """Task names, with the metric when the tasks do not all use the same one."""
    tasks = _tasks(results)
    per_task = results.get("metric_per_task") or {}
    if len(set(per_task.values())) <= 1:
        return tasks
    return [f"{t} ({metric_label(per_task.get(t))})" for t in tasks]


def plot_fraction_heatmap(matrix: Sequence[Sequence[float]], path, *, rows: Sequence[str], columns: Sequence[str],
                          xlabel: str, ylabel: str, title: str, colorbar_label: str = "fraction (0..1)") -> Path:
    """A PNG heatmap of values in 0..1 (attention weights, selection frequencies, overlaps, confusion rates), cells
    annotated when there are at most 16 columns. The one plot behind the methods' ``*_heatmap.png`` insights."""
    fig = new_figure(max(4.0, 0.55 * len(columns) + 2.5), max(3.0, 0.5 * len(rows) + 1.8))
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
    return save_png(fig, path)


def plot_matrix_heatmap(results: dict, path) -> Path:
    """A PNG heatmap of the score matrix: cells annotated (whole numbers from 11 tasks on), null cells grey, task
    names (and their metric, when the tasks differ in it) on the axes; the title names the metric."""
    import numpy as np
    from matplotlib import colormaps

    tasks = _tasks(results)
    matrix = results["matrix"]
    t = len(matrix)
    values = np.ma.masked_invalid(np.array([[np.nan if v is None else float(v) for v in row] for row in matrix],
                                           dtype=float).reshape(t, t))
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    side = max(4.0, 0.62 * t + 2.5)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap=cmap, vmin=0, vmax=100)
    name = score_name(results)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label=f"{name.lower() if name != 'Score' else 'score (metric per column)'} (0..100)")
    fontsize = 8 if t <= 6 else 7 if t <= 10 else 6
    ax.set_xticks(range(t), labels=_column_labels(results), rotation=45, ha="right", fontsize=fontsize + 1)
    ax.set_yticks(range(t), labels=[f"{i + 1}. {name}" for i, name in enumerate(tasks)], fontsize=fontsize + 1)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    decimals = 1 if t <= 10 else 0
    for i in range(t):
        for j in range(t):
            v = matrix[i][j]
            if v is not None:
                ax.text(j, i, f"{v:.{decimals}f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if v > 60 else "white")
    ax.set_title(f"{name} matrix: {_run_title(results)}")
    return save_png(fig, path)


SINGLE_PLOT_TASKS = 8  # up to this many tasks: one plot, a distinct colour each (tab10); beyond: one panel each


def plot_task_trajectories(results: dict, path) -> Path:
    """Each task's score after each training step of the stream, the step that trained it marked. Up to
    ``SINGLE_PLOT_TASKS`` tasks share one plot (distinct colours, legend beside it); longer streams get small
    multiples, one panel per task in stream order, readable at 15-20 tasks where one plot's lines and labels are
    not."""
    tasks = _tasks(results)
    matrix = results["matrix"]
    per_task = results.get("metric_per_task") or {}
    t = len(tasks)
    series = [[(i + 1, row[j]) for i, row in enumerate(matrix) if row[j] is not None] for j in range(t)]
    title = f"Per-task trajectories: {_run_title(results)}"
    if t <= SINGLE_PLOT_TASKS:
        fig = new_figure(max(5.0, 0.6 * t + 4.0), 4.0)
        ax = fig.add_subplot()
        for j, points in enumerate(series):
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="os^Dv<>p"[j], color=f"C{j}",
                        label=f"{j + 1}. {tasks[j]} ({metric_label(per_task.get(tasks[j]))})")
        ax.set_xticks(range(1, t + 1))
        ax.set_xlabel("after training task (stream position)")
        ax.set_ylabel("score (0..100)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return save_png(fig, path)
    columns = 5
    rows = math.ceil(t / columns)
    fig = new_figure(2.6 * columns + 0.6, 2.1 * rows + 0.8)
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for j in range(rows * columns):
        ax = axes[j // columns][j % columns]
        if j >= t:
            ax.set_visible(False)
            continue
        ax.axvline(j + 1, color="grey", linestyle=":", linewidth=1)
        if series[j]:
            xs, ys = zip(*series[j])
            ax.plot(xs, ys, marker="o", markersize=3, color="tab:blue")
            ax.annotate(f"{ys[-1]:.0f}", (xs[-1], ys[-1]), xytext=(3, 3), textcoords="offset points", fontsize=7)
        ax.set_title(f"{j + 1}. {tasks[j]}"[:32], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.text(0.02, 0.04, metric_label(per_task.get(tasks[j])), transform=ax.transAxes, fontsize=6, color="grey")
    axes[0][0].set_ylim(-5, 105)
    axes[0][0].set_xlim(0.5, t + 0.5)
    axes[0][0].set_xticks(range(1, t + 1, 1 if t <= 10 else 2 if t <= 20 else 5))
    fig.supxlabel("after training task (stream position); dotted: the step that trains the panel's task", fontsize=8)
    fig.supylabel("score (0..100)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def plot_metric_bars(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], path, *,
                     title: str, errors: Sequence[Sequence[float | None]] | None = None) -> Path:
    """Horizontal grouped bars, one group per label (read top to bottom), one bar per series (e.g. AP and BWT),
    each annotated with its value ("–" for a missing one); optional error bars (standard deviations)."""
    n, k = len(labels), len(series)
    height = 0.8 / k
    fig = new_figure(8.0, max(2.5, 0.25 * n * k + 1.4))
    ax = fig.add_subplot()
    for s, (name, values) in enumerate(series):
        ys = [y + (s - (k - 1) / 2) * height for y in range(n)]
        xerr = None
        if errors is not None:
            xerr = [0.0 if e is None else e for e in errors[s]]
        bars = ax.barh(ys, [0.0 if v is None else v for v in values], height, label=name, xerr=xerr,
                       error_kw={"elinewidth": 0.8, "capsize": 2})
        for y, bar, v in zip(ys, bars, values):
            if v is None:
                bar.set_visible(False)
            ax.annotate("–" if v is None else f"{v:.1f}", (0.0 if v is None else v, y), va="center",
                        ha="left" if (v or 0) >= 0 else "right", fontsize=7,
                        xytext=(3 if (v or 0) >= 0 else -3, 0), textcoords="offset points")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(n), labels=list(labels), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("score (0..100)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    present = [v for _, values in series for v in values if v is not None]
    ax.set_xlim(min([0.0, *present]) - 8, max([100.0, *present]) + 8)  # the whole score scale, room for labels
    return save_png(fig, path)


def plot_ap_distribution(labels: Sequence[str], data: Sequence[Sequence[float]], path) -> Path:
    """Box plot (with the individual runs as points) of AP per experiment across seeds."""
    fig = new_figure(8.0, max(2.5, 0.4 * len(labels) + 1.4))
    ax = fig.add_subplot()
    import matplotlib

    horizontal = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                  else {"vert": False})  # "vert" is deprecated from matplotlib 3.11 on
    ax.boxplot(data, tick_labels=list(labels), **horizontal)
    for k, values in enumerate(data, start=1):
        ax.scatter(values, [k] * len(values), s=14, alpha=0.7, zorder=3)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    values = [v for group in data for v in group]
    if values and max(values) - min(values) < 10:  # at least 10 points wide: equal runs are not a thin line
        middle = (max(values) + min(values)) / 2
        ax.set_xlim(middle - 5, middle + 5)
    ax.set_xlabel("AP (0..100)")
    ax.set_title("AP across seeds (one box per experiment)")
    return save_png(fig, path)


def routing_by_task(attention: dict) -> tuple[list[str], list[str], list[list[float]]]:
    """AM-LoRA's per-task routing from its ``amlora_attention.json``: rows the input tasks, columns the LoRAs (the
    zero LoRA first), each cell the mean selector weight over every adapted layer (each row sums to 1)."""
    tasks, loras = list(attention["tasks"]), list(attention["loras"])
    matrix = []
    for task in tasks:
        layers = list(attention["per_task"][task].values())
        matrix.append([sum(layer[i] for layer in layers) / len(layers) for i in range(len(loras))])
    return tasks, loras, matrix


def plot_routing(attention: dict, path) -> Path:
    """The share of each input task's selector weight that goes to each LoRA (AM-LoRA, paper §6 / Figure 4 per
    task instead of per layer): a task routed to its own LoRA shows a bright diagonal."""
    tasks, loras, matrix = routing_by_task(attention)
    return plot_fraction_heatmap(matrix, path, rows=tasks, columns=[f"{i}: {n}" for i, n in enumerate(loras)],
                                 xlabel="LoRA (0 = the zero LoRA, i = trained on task i)", ylabel="inputs of task",
                                 title="AM-LoRA routing: mean selector weight per input task and LoRA "
                                       "(mean over layers)", colorbar_label="mean selector weight (row sums to 1)")
