"""Reports of runs: the markdown report of one run (with its figures) and the comparison table of several runs.

Every function takes the ``results.json`` dict of docs/metrics.md (keys benchmark, order, method, model, seed,
tasks, metric_per_task, matrix, single_task, metrics, timing, versions, protocol, parameters, config, ...). Figures
are in eval/figures.py, mean ± std over seeds in eval/aggregate.py, CSV/LaTeX in eval/formats.py, the HTML report in
eval/html.py. Files are written atomically (io_utils).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from continual_lm.eval.cl_metrics import METRIC_NAMES, cl_metrics
from continual_lm.io_utils import atomic_write_text as _atomic_write_text

from .aggregate import COST_HEADERS, COST_NAMES, costs, format_cost
from .experiments import COLUMN_KEYS, flatten, labels
from .figures import plot_fraction_heatmap  # noqa: F401 (the methods' heatmaps import it from here)
from .figures import plot_matrix_heatmap, plot_metric_bars, plot_task_trajectories, score_name
from .tables import (DASH, PROTOCOL_LEGEND, PROTOCOL_LETTERS, cell, fmt,  # noqa: F401 (re-exported)
                     protocol_flags, table)

MATRIX_PNG = "accuracy_matrix.png"  # the score matrix heatmap (name kept: docs and users refer to it)
TRAJECTORY_PNG = "task_trajectories.png"
REPORT_MD = "report.md"


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


def metrics_of(results: dict) -> dict:
    """The run's AP, F.Ra, FWT, BWT (computed from the matrix, the one way they are defined, when results.json
    predates them)."""
    metrics = results.get("metrics")
    if metrics is None:  # an older or partial results dict: compute them the one way they are defined
        metrics = cl_metrics(results["matrix"], _single_list(results), final_row=final_scores(results))
    return metrics


def run_labels(results_list: Sequence[dict], hide: Sequence[str] = COLUMN_KEYS) -> list[str]:
    """One distinct label per run: its method plus the options that differ among the runs of that method
    (eval/experiments.py); runs alike in all of that get "#1", "#2" (e.g. the same configuration twice)."""
    names = labels(results_list, hide)
    shown = [(n, *(str(r.get(k)) for k in hide)) for n, r in zip(names, results_list)]
    seen: dict[tuple, int] = {}
    out = []
    for name, key in zip(names, shown):
        seen[key] = seen.get(key, 0) + 1
        out.append(name if shown.count(key) == 1 else f"{name} #{seen[key]}")
    return out


# ---------------------------------------------------------------------------------------------- markdown
def matrix_markdown(results: dict, key: str = "matrix") -> str:
    """A score matrix (``results[key]``) as a markdown table: rows "after <task>", columns the tasks, 1 decimal,
    "–" for null."""
    tasks = _tasks(results)
    rows = [[cell(f"after {tasks[i]}")] + [fmt(v, 1) for v in row] for i, row in enumerate(results[key])]
    return table(["", *(cell(t) for t in tasks)], rows)


def _figures(run_dir) -> list[str]:
    if run_dir is None:
        return []
    run_dir = Path(run_dir)
    figs = [name for name in (MATRIX_PNG, TRAJECTORY_PNG) if (run_dir / name).is_file()]
    figs += sorted(p.name for p in run_dir.glob("*_heatmap.png") if p.is_file() and p.name != MATRIX_PNG)
    return figs


def resolved_options(results: dict, run_dir=None) -> dict:
    """Every resolved option of the run, flattened (``lora.r``, ``method_options.migu.threshold``): results.json's
    "config", else the run directory's config.yaml; {} when neither is there."""
    config = results.get("config")
    if not isinstance(config, dict) and run_dir is not None and (Path(run_dir) / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    return flatten(config) if isinstance(config, dict) else {}


def cost_markdown(results: dict) -> str:
    values = costs(results)
    return table([COST_HEADERS[c] for c in COST_NAMES], [[format_cost(c, values[c]) for c in COST_NAMES]], 0)


def run_report_markdown(results: dict, run_dir=None) -> str:
    """The markdown report of one run. With ``run_dir``, its figures (the score matrix heatmap, the trajectories and
    any ``*_heatmap.png``) are embedded under "## Figures"."""
    tasks = _tasks(results)
    method = results.get("method")
    lines = [f"# Run report: {cell(method)} on {cell(results.get('benchmark'))}", ""]
    for key in ("benchmark", "order", "method", "model", "seed"):
        lines.append(f"- **{key}**: {cell(results.get(key))}")
    lines.append(f"- **protocol**: {protocol_flags(results.get('protocol'))} ({PROTOCOL_LEGEND})")
    lines += ["", "## Metrics", ""]
    metrics = metrics_of(results)
    lines.append(table(list(METRIC_NAMES), [[fmt(metrics.get(k), 2) for k in METRIC_NAMES]], 0))
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

    per_task = results.get("metric_per_task") or {}
    name = score_name(results)
    lines += ["", f"## {name} matrix", "", "Row i: after training task i; column j: score on task j"
              + (" (each task's metric is in the final scores below)." if name == "Score" else "."), "",
              matrix_markdown(results)]
    if results.get("matrix_macro_f1"):  # continual pre-training: the end tasks' macro-F1 beside their accuracy
        f1_metrics = results.get("metrics_macro_f1") or {}
        lines += ["", "## End-task macro-F1 matrix", "", "Same layout; corpus tasks' end tasks scored by macro-F1 "
                  "(docs/continual_pretraining.md).", "", matrix_markdown(results, "matrix_macro_f1"), "",
                  table(list(METRIC_NAMES), [[fmt(f1_metrics.get(k), 2) for k in METRIC_NAMES]], 0)]

    lines += ["", "## Final scores", ""]
    single = _single_list(results)
    header = ["task", "metric", "final"] + (["single-task"] if single is not None else [])
    rows = []
    for j, (task, v) in enumerate(zip(tasks, final_scores(results))):
        row = [cell(task), cell(per_task.get(task)), fmt(v, 2)]
        if single is not None:
            row.append(fmt(single[j] if j < len(single) else None, 2))
        rows.append(row)
    lines.append(table(header, rows, 2))

    if results.get("unseen"):
        lines += ["", "## Unseen tasks", "", unseen_markdown([results])]
    if results.get("general"):
        from .general import general_markdown

        lines += ["", "## General abilities", "", general_markdown(results["general"])]
    timing = results.get("timing") or {}
    lines += ["", "## Cost", "", cost_markdown(results), "",
              "Trainable: parameters trained in the run's largest phase; stored/task: every parameter the run keeps "
              "beyond the base model (trained blocks and method state), over the number of tasks."]
    train_s, eval_s = timing.get("train_s"), timing.get("eval_s")
    if train_s is not None and eval_s is not None:
        lines += ["", f"Total time: {train_s + eval_s:.1f} s."]

    options = resolved_options(results, run_dir)
    if options:
        lines += ["", "## Configuration", "", "Every resolved option of the run (config.yaml):", ""]
        lines += [f"- {cell(k)}: {cell(v)}" for k, v in options.items()]

    versions = results.get("versions") or {}
    if versions:
        lines += ["", "## Versions", ""]
        lines += [f"- {cell(k)}: {cell(v)}" for k, v in versions.items()]

    figures = _figures(run_dir)
    if figures:
        lines += ["", "## Figures", ""]
        for figure in figures:
            lines += [f"![{figure[:-4]}]({figure})", ""]
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
        return [cell(label), *(fmt(v, 2) for v in values), fmt(sum(present) / len(present) if present else None, 2)]

    names = run_labels(with_unseen)
    rows = [row(label, r["unseen"]["final"]) for label, r in zip(names, with_unseen)]
    rows.append(row("zero-shot base model", with_unseen[0]["unseen"]["base_model"]))
    return "Unseen tasks (never trained; zero-shot after the stream):\n\n" + table(
        ["run", *(cell(t) for t in tasks), "avg"], rows)


def all_tasks(results_list: Sequence[dict]) -> list[str]:
    """The union of the runs' tasks, in first-seen order."""
    found: list[str] = []
    for r in results_list:
        found += [t for t in _tasks(r) if t not in found]
    return found


def varying_columns(results_list: Sequence[dict]) -> list[str]:
    return [k for k in COLUMN_KEYS if len({str(r.get(k)) for r in results_list}) > 1]


def comparison_table(results_list: Sequence[dict]) -> tuple[list[str], list[list[str]], int]:
    """Header, rows (text) and the first numeric column of the per-run comparison: the run's label (the method and
    the options that differ among that method's runs), its declared protocol, benchmark/order/model/seed where the
    runs differ in them, AP, F.Ra, FWT, BWT, the cost (trainable and stored parameters, train and eval time), then
    the final score of each task (the union of the runs' tasks, in first-seen order; "–" where a run lacks it)."""
    if not results_list:
        raise ValueError("comparison_markdown needs at least one results dict")
    varying = varying_columns(results_list)
    tasks = all_tasks(results_list)
    header = ["method", "protocol", *varying, *METRIC_NAMES, *(COST_HEADERS[c] for c in COST_NAMES), *tasks]
    rows = []
    for label, r in zip(run_labels(results_list), results_list):
        metrics = metrics_of(r)
        final = dict(zip(_tasks(r), final_scores(r)))
        cost = costs(r)
        shown = [DASH if r.get(k) is None else str(r.get(k)) for k in varying]
        rows.append([label, protocol_flags(r.get("protocol")), *shown,
                     *(fmt(metrics.get(k), 2) for k in METRIC_NAMES), *(format_cost(c, cost[c]) for c in COST_NAMES),
                     *(fmt(final.get(t), 2) for t in tasks)])
    return header, rows, 2 + len(varying)


def comparison_markdown(results_list: Sequence[dict]) -> str:
    """The per-run comparison (``comparison_table``) as markdown, the protocol legend under it, then the unseen
    tasks' table when the runs have one."""
    header, rows, numeric_from = comparison_table(results_list)
    text = table([cell(h) for h in header], [[cell(v) for v in r] for r in rows], numeric_from)
    text += f"\n\nProtocol: {PROTOCOL_LEGEND}."
    unseen = unseen_markdown(results_list)
    return f"{text}\n\n{unseen}" if unseen else text


# ------------------------------------------------------------------------------------------------ figures
def plot_comparison_bars(results_list: Sequence[dict], path) -> Path:
    """Horizontal grouped bars of AP and BWT, one group per run (a missing value gets no bar and a "–" label)."""
    if not results_list:
        raise ValueError("plot_comparison_bars needs at least one results dict")
    names = run_labels(results_list, hide=())
    series = [(m, [metrics_of(r).get(m) for r in results_list]) for m in ("AP", "BWT")]
    return plot_metric_bars(names, series, path, title="AP and BWT per run")


def write_run_report(run_dir, results: dict) -> None:
    """Write ``accuracy_matrix.png`` (the score matrix), ``task_trajectories.png`` and ``report.md`` (embedding them
    and any ``*_heatmap.png``) into ``run_dir``, each atomically."""
    run_dir = Path(run_dir)
    plot_matrix_heatmap(results, run_dir / MATRIX_PNG)
    plot_task_trajectories(results, run_dir / TRAJECTORY_PNG)
    _atomic_write_text(run_dir / REPORT_MD, run_report_markdown(results, run_dir=run_dir))
