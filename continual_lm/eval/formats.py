"""The experiment table in the formats people paste: CSV (spreadsheets, pandas) and LaTeX (booktabs, papers).

One row per experiment (eval/aggregate.py: runs that differ only in the seed). CSV has a mean, std and n column per
metric (std empty below 2 runs) and the cost in plain numbers (parameters, seconds). LaTeX shows mean ± std, the
best value of each metric column in bold among the rows of one benchmark and task order (higher is better for AP,
FWT and BWT, lower for F.Ra), and needs ``\\usepackage{booktabs}``.
"""
from __future__ import annotations

import csv
import io
from typing import Sequence

from .aggregate import COST_NAMES, LOWER_IS_BETTER, Experiment, experiments
from .cl_metrics import METRIC_NAMES
from .tables import PROTOCOL_LEGEND

CSV_COST_COLUMNS = {"trainable": "trainable_params", "stored/task": "stored_params_per_task", "train_s": "train_s",
                    "eval_s": "eval_s"}
LATEX_MISSING = "--"
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--",
                  "±": r"$\pm$"}


def csv_header() -> list[str]:
    return (["benchmark", "order", "method", "label", "model", "protocol", "seeds"]
            + [f"{m}_{part}" for m in METRIC_NAMES for part in ("mean", "std", "n")]
            + list(CSV_COST_COLUMNS.values()))


def _number(value) -> str:
    return "" if value is None else repr(float(value)) if isinstance(value, float) else str(value)


def experiments_csv(results_list: Sequence[dict]) -> str:
    """The experiment table as CSV text (header first; empty cells for missing values; full precision)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_header())
    for exp in experiments(results_list):
        first = exp.runs[0]
        row = [exp.benchmark, exp.order, exp.method, exp.label, first.get("model") or "", exp.protocol,
               ";".join(str(r.get("seed")) for r in exp.runs)]
        for m in METRIC_NAMES:
            s = exp.metrics[m]
            row += ["", "", "0"] if s is None else [_number(s[0]), _number(s[1]), str(s[2])]
        row += [_number(exp.cost[c]) for c in COST_NAMES]
        writer.writerow(row)
    return buf.getvalue()


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def best_rows(exps: Sequence[Experiment], metric: str, decimals: int = 2) -> set[int]:
    """Indices of the experiments whose (displayed) mean of ``metric`` is the best among the experiments of their
    benchmark and order; ties are all best."""
    best: dict[tuple[str, str], float] = {}
    pick = min if metric in LOWER_IS_BETTER else max
    for exp in exps:
        if exp.metrics[metric] is not None:
            value = round(exp.metrics[metric][0], decimals)
            block = (exp.benchmark, exp.order)
            best[block] = pick(best.get(block, value), value)
    return {k for k, exp in enumerate(exps) if exp.metrics[metric] is not None
            and round(exp.metrics[metric][0], decimals) == best[(exp.benchmark, exp.order)]}


def _latex_stats(stats, bold: bool, decimals: int) -> str:
    if stats is None:
        return LATEX_MISSING
    text = f"{stats[0]:.{decimals}f}" + ("" if stats[1] is None else rf" \pm {stats[1]:.{decimals}f}")
    return f"$\\mathbf{{{text}}}$" if bold else f"${text}$"


def experiments_latex(results_list: Sequence[dict], decimals: int = 2) -> str:
    """The experiment table as a booktabs ``tabular``: benchmark, order, method label, protocol, seeds, every metric
    as mean ± std (best per column and benchmark/order in bold), trainable and stored parameters per task."""
    from .aggregate import format_count

    exps = experiments(results_list)
    bold = {m: best_rows(exps, m, decimals) for m in METRIC_NAMES}
    arrows = {m: r"$\downarrow$" if m in LOWER_IS_BETTER else r"$\uparrow$" for m in METRIC_NAMES}
    header = ["Benchmark", "Order", "Method", "Protocol", "$n$", *(f"{m} {arrows[m]}" for m in METRIC_NAMES),
              "Trainable", "Stored/task"]
    lines = [f"% continual_lm experiment table; needs \\usepackage{{booktabs}}. Protocol: {PROTOCOL_LEGEND}.",
             "% Mean $\\pm$ sample std over seeds (std from 2 runs on); bold: best per column within a benchmark and "
             "order.",
             r"\begin{tabular}{llll" + "r" * (len(header) - 4) + "}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    for k, exp in enumerate(exps):
        cells = [latex_escape(exp.benchmark), latex_escape(exp.order), latex_escape(exp.label),
                 latex_escape(exp.protocol), str(exp.n)]
        cells += [_latex_stats(exp.metrics[m], k in bold[m], decimals) for m in METRIC_NAMES]
        cells += [latex_escape(format_count(exp.cost[c])) if exp.cost[c] is not None else LATEX_MISSING
                  for c in ("trainable", "stored/task")]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
