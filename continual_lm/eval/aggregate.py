"""Repeated runs as the papers report them: mean ± std over seeds, and the average over task orders ("Avg").

Runs are grouped by (benchmark, method). Within a group, each order's runs (one per seed) give a mean and a
sample standard deviation (n-1 in the denominator; 0 for a single run); "Avg" is the mean of the per-order means.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .cl_metrics import METRIC_NAMES

DASH = "–"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def group_runs(results_list: Sequence[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    groups: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for results in results_list:
        groups[(str(results.get("benchmark")), str(results.get("method")))][str(results.get("order"))].append(results)
    return groups


def is_repeated(results_list: Sequence[dict]) -> bool:
    """True when some method has more than one run (several seeds or orders)."""
    return any(sum(len(v) for v in orders.values()) > 1 for orders in group_runs(results_list).values())


def _metric_values(runs: list[dict], metric: str) -> list[float]:
    return [r["metrics"][metric] for r in runs if r.get("metrics", {}).get(metric) is not None]


def summarise(results_list: Sequence[dict]) -> list[dict]:
    """One row per (benchmark, method): per order and metric (mean, std, n), and the Avg over orders."""
    rows = []
    for (benchmark, method), orders in group_runs(results_list).items():
        per_order = {}
        for order, runs in sorted(orders.items()):
            per_order[order] = {m: (mean_std(v) + (len(v),)) if (v := _metric_values(runs, m)) else None
                                for m in METRIC_NAMES}
        avg = {}
        for m in METRIC_NAMES:
            means = [stats[m][0] for stats in per_order.values() if stats[m] is not None]
            avg[m] = sum(means) / len(means) if means else None
        from .report import protocol_flags

        flags = sorted({protocol_flags(r.get("protocol")) for runs in orders.values() for r in runs})
        rows.append({"benchmark": benchmark, "method": method, "orders": per_order, "avg": avg,
                     "runs": sum(len(v) for v in orders.values()), "protocol": " / ".join(flags)})
    return rows


def _pm(stats) -> str:
    return DASH if stats is None else f"{stats[0]:.2f} ± {stats[1]:.2f}"


def aggregate_markdown(results_list: Sequence[dict]) -> str:
    """Two tables: every metric as mean ± std over seeds per (method, order); AP per order and the Avg column. The
    protocol column is the methods' declared protocol (legend: ``report.PROTOCOL_LEGEND``)."""
    from .report import PROTOCOL_LEGEND

    rows = summarise(results_list)
    out = ["Mean ± std over seeds (sample std):", "",
           "| benchmark | method | protocol | order | seeds | " + " | ".join(METRIC_NAMES) + " |",
           "| --- | --- | --- | --- | ---: | " + " | ".join("---:" for _ in METRIC_NAMES) + " |"]
    for row in rows:
        for order, stats in row["orders"].items():
            n = max((s[2] for s in stats.values() if s is not None), default=0)
            out.append(f"| {row['benchmark']} | {row['method']} | {row['protocol']} | {order} | {n} | "
                       + " | ".join(_pm(stats[m]) for m in METRIC_NAMES) + " |")
    orders = sorted({o for row in rows for o in row["orders"]})
    out += ["", "AP per order (mean over seeds) and the average over orders:", "",
            "| benchmark | method | protocol | " + " | ".join(f"order {o}" for o in orders) + " | Avg AP | Avg BWT |",
            "| --- | --- | --- | " + " | ".join("---:" for _ in orders) + " | ---: | ---: |"]
    for row in rows:
        cells = [DASH if row["orders"].get(o, {}).get("AP") is None else f"{row['orders'][o]['AP'][0]:.2f}"
                 for o in orders]
        avg = [DASH if row["avg"][m] is None else f"{row['avg'][m]:.2f}" for m in ("AP", "BWT")]
        out.append(f"| {row['benchmark']} | {row['method']} | {row['protocol']} | " + " | ".join(cells) + " | "
                   + " | ".join(avg) + " |")
    out += ["", f"Protocol: {PROTOCOL_LEGEND}."]
    return "\n".join(out)


def plot_ap_distribution(results_list: Sequence[dict], path) -> Path:
    """Box plot (with the individual runs as points) of AP per method across seeds and orders."""
    from .report import _new_figure, _save_png

    groups = group_runs(results_list)
    labels, data = [], []
    for (benchmark, method), orders in groups.items():
        values = [v for runs in orders.values() for v in _metric_values(runs, "AP")]
        if values:
            labels.append(method if len({b for b, _ in groups}) == 1 else f"{method}\n{benchmark}")
            data.append(values)
    fig = _new_figure(max(4.5, 1.2 * len(labels) + 2.0), 4.5)
    ax = fig.add_subplot()
    ax.boxplot(data, tick_labels=labels)
    for k, values in enumerate(data, start=1):
        ax.scatter([k] * len(values), values, s=14, alpha=0.7, zorder=3)
    ax.set_ylabel("AP (0..100)")
    ax.set_title("AP across seeds and orders")
    return _save_png(fig, path)
