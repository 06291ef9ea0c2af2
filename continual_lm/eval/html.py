"""One self-contained HTML report per comparison: the tables and every figure in a single file that opens offline.

Figures are embedded as base64 PNG (``data:`` URLs), the style sheet is inline, nothing is loaded from anywhere:
the file can be mailed, attached or opened from a USB stick. Sections: the per-run comparison, the per-experiment
mean ± std (best per column in bold), AP per order, the AP/BWT bars, the AP box plot (repeated runs), then each
run's figures (score matrix, trajectories, and the method's own ``*_heatmap.png``, e.g. AM-LoRA's routing) in a
collapsible block.
"""
from __future__ import annotations

import base64
import html
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .aggregate import (EXPERIMENT_CAPTION, ORDERS_CAPTION, experiment_table, experiments, is_repeated,
                        orders_table, plot_ap_distribution)
from .cl_metrics import METRIC_NAMES
from .tables import PROTOCOL_LEGEND

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e3e3e3; white-space: nowrap; }
th { background: #f3f5f7; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; }
p.note { color: #555; font-size: 0.85em; max-width: 70em; }
img { max-width: 100%; height: auto; margin: 6px 0; border: 1px solid #eee; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
"""


def png_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{png_data_url(data)}">'


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int,
               bold: dict[int, set[int]] | None = None) -> str:
    """A table; columns from ``numeric_from`` on are right-aligned; ``bold``: column index -> bold row indices."""
    bold = bold or {}
    out = ['<div class="scroll"><table>', "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            classes = (["num"] if c >= numeric_from else []) + (["best"] if r in bold.get(c, ()) else [])
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{html.escape(str(value))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table></div>"])


def _run_figures(results: dict, workdir: Path, index: int) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) of a run's figures: those in its run directory, or drawn from its results."""
    from .figures import plot_matrix_heatmap, plot_task_trajectories
    from .report import MATRIX_PNG, TRAJECTORY_PNG

    run_dir = Path(results["run_dir"]) if results.get("run_dir") else None
    found = []
    for name, plot in ((MATRIX_PNG, plot_matrix_heatmap), (TRAJECTORY_PNG, plot_task_trajectories)):
        path = run_dir / name if run_dir is not None and (run_dir / name).is_file() else None
        if path is None:
            path = plot(results, workdir / f"run{index}_{name}")
        found.append((name, path.read_bytes()))
    if run_dir is not None:
        found += [(p.name, p.read_bytes()) for p in sorted(run_dir.glob("*_heatmap.png")) if p.is_file()]
    return found


def comparison_html(results_list: Sequence[dict], *, title: str = "continual_lm comparison") -> str:
    """The self-contained HTML document of a comparison of ``results_list`` (see the module docstring)."""
    from .formats import best_rows
    from .report import comparison_table, plot_comparison_bars, run_labels, unseen_markdown

    header, rows, numeric_from = comparison_table(results_list)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f'<p class="note">{len(results_list)} run(s); written by continual_lm on '
             f'{time.strftime("%Y-%m-%d %H:%M")}. Scores are on a 0..100 scale (docs/metrics.md). Protocol: '
             f"{html.escape(PROTOCOL_LEGEND)}.</p>",
             "<h2>Runs</h2>", html_table(header, rows, numeric_from)]
    unseen = unseen_markdown(results_list)
    if unseen:
        parts.append(f'<p class="note">{html.escape(unseen.splitlines()[0])} (see comparison.md)</p>')
    exps = experiments(results_list)
    header, rows = experiment_table(results_list)
    first_metric = header.index(METRIC_NAMES[0])
    bold = {first_metric + k: best_rows(exps, m) for k, m in enumerate(METRIC_NAMES)}
    parts += ["<h2>Experiments</h2>", f'<p class="note">{html.escape(EXPERIMENT_CAPTION)} Bold: the best value of '
              f"each metric among the experiments of one benchmark and order (lower is better for F.Ra).</p>",
              html_table(header, rows, 4, bold)]
    header, rows = orders_table(results_list)
    parts += ["<h2>Task orders</h2>", f'<p class="note">{html.escape(ORDERS_CAPTION)}</p>',
              html_table(header, rows, 3)]
    with tempfile.TemporaryDirectory(prefix="continual_lm_html_") as tmp:
        workdir = Path(tmp)
        parts += ["<h2>Figures</h2>", _img(plot_comparison_bars(results_list, workdir / "bars.png").read_bytes(),
                                           "AP and BWT per run")]
        if is_repeated(results_list):
            parts.append(_img(plot_ap_distribution(results_list, workdir / "box.png").read_bytes(),
                              "AP across seeds"))
        parts.append("<h2>Each run</h2>")
        for index, (label, results) in enumerate(zip(run_labels(results_list, hide=()), results_list)):
            figures = _run_figures(results, workdir, index)
            where = f" ({html.escape(results['run_dir'])})" if results.get("run_dir") else ""
            opened = " open" if index == 0 else ""  # the first run's figures show without a click
            parts.append(f"<details{opened}><summary>{html.escape(label)}{where}</summary>")
            parts += [_img(data, name[:-4]) for name, data in figures]
            parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
