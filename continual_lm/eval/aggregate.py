"""Repeated runs as the papers report them: mean ± std over seeds, and the average over task orders ("Avg").

Runs are averaged only within one experiment (eval/experiments.py: the same configuration but for the seed: same
benchmark, order, model, method, method options, lr, epochs, batch, LoRA, data sizes, ...). Each experiment gives a
mean and a sample standard deviation (n-1 in the denominator; shown only from 2 runs on) per metric; "Avg" is the
mean of the per-order means of one configuration. Configurations of one method are told apart by their labels
(``seqlora (lr=0.001)``). Each row also carries the method's declared protocol and its cost: trainable parameters,
stored parameters per task, train and eval time (means over the runs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from .cl_metrics import METRIC_NAMES
from .experiments import configuration_key, experiment_key, labels
from .tables import DASH, PROTOCOL_LEGEND, cell, protocol_flags, table
# Higher is better for every metric but the forgetting rate.
LOWER_IS_BETTER = frozenset({"F.Ra"})
COST_NAMES = ("trainable", "stored/task", "train_s", "eval_s")
COST_HEADERS = {"trainable": "trainable params", "stored/task": "stored params/task", "train_s": "train (s)",
                "eval_s": "eval (s)"}

Stats = tuple[float, float | None, int]  # mean, sample std (None for one run), n


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def stats(values: Sequence[float]) -> Stats | None:
    """(mean, sample std or None for a single value, n); None without values."""
    if not values:
        return None
    mean, std = mean_std(values)
    return mean, std if len(values) > 1 else None, len(values)


def costs(results: dict) -> dict[str, float | None]:
    """A run's cost from its results.json: parameters trained in its largest phase, parameters stored per task
    (everything the run keeps beyond the base model, over the number of tasks), train and eval seconds."""
    params = results.get("parameters") or {}
    timing = results.get("timing") or {}
    return {"trainable": params.get("trainable"), "stored/task": params.get("stored_per_task"),
            "train_s": timing.get("train_s"), "eval_s": timing.get("eval_s")}


@dataclass
class Experiment:
    """The runs of one experiment (all seeds of one configuration and order)."""

    label: str
    benchmark: str
    order: str
    method: str
    protocol: str
    runs: list[dict]
    metrics: dict[str, Stats | None] = field(default_factory=dict)
    cost: dict[str, float | None] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class Configuration:
    """The experiments of one configuration over task orders; ``avg``: the mean of their per-order means."""

    label: str
    benchmark: str
    method: str
    protocol: str
    orders: dict[str, Experiment]
    avg: dict[str, float | None] = field(default_factory=dict)


def _metric_values(runs: list[dict], metric: str) -> list[float]:
    return [r["metrics"][metric] for r in runs if (r.get("metrics") or {}).get(metric) is not None]


def _protocol(runs: list[dict]) -> str:
    return " / ".join(sorted({protocol_flags(r.get("protocol")) for r in runs}))


def experiments(results_list: Sequence[dict]) -> list[Experiment]:
    """One Experiment per distinct configuration-but-the-seed, in first-seen order, labelled by what differs among
    the configurations of its method."""
    names = labels(results_list, hide=("benchmark", "order", "seed"))  # the tables have benchmark/order columns
    grouped: dict[str, Experiment] = {}
    for label, results in zip(names, results_list):
        key = experiment_key(results)
        if key not in grouped:
            grouped[key] = Experiment(label, str(results.get("benchmark")), str(results.get("order")),
                                      str(results.get("method")), "", [])
        grouped[key].runs.append(results)
    for exp in grouped.values():
        exp.protocol = _protocol(exp.runs)
        exp.metrics = {m: stats(_metric_values(exp.runs, m)) for m in METRIC_NAMES}
        for name in COST_NAMES:
            values = [v for r in exp.runs if (v := costs(r)[name]) is not None]
            exp.cost[name] = round(sum(values) / len(values), 2) if values else None
    return list(grouped.values())


def configurations(results_list: Sequence[dict]) -> list[Configuration]:
    """The experiments grouped over task orders (same configuration but seed and order), with the Avg."""
    grouped: dict[str, Configuration] = {}
    for exp in experiments(results_list):
        key = configuration_key(exp.runs[0])
        if key not in grouped:
            grouped[key] = Configuration(exp.label, exp.benchmark, exp.method, exp.protocol, {})
        grouped[key].orders[exp.order] = exp
    for conf in grouped.values():
        conf.orders = dict(sorted(conf.orders.items()))
        for m in METRIC_NAMES:
            means = [s[0] for exp in conf.orders.values() if (s := exp.metrics[m]) is not None]
            conf.avg[m] = sum(means) / len(means) if means else None
    return list(grouped.values())


def summarise(results_list: Sequence[dict]) -> list[dict]:
    """One row per configuration: its label, per order and metric (mean, std, n), and the Avg over orders."""
    return [{"benchmark": c.benchmark, "method": c.method, "label": c.label, "protocol": c.protocol,
             "orders": {o: exp.metrics for o, exp in c.orders.items()}, "avg": c.avg,
             "runs": sum(exp.n for exp in c.orders.values())} for c in configurations(results_list)]


def is_repeated(results_list: Sequence[dict]) -> bool:
    """True when some configuration has more than one run (several seeds or orders)."""
    return any(sum(exp.n for exp in c.orders.values()) > 1 for c in configurations(results_list))


def format_stats(s: Stats | None, decimals: int = 2, pm: str = " ± ") -> str:
    if s is None:
        return DASH
    return f"{s[0]:.{decimals}f}" + ("" if s[1] is None else f"{pm}{s[1]:.{decimals}f}")


def format_count(n: float | None) -> str:
    """A parameter count: 1234 -> 1.2K, 3.4e6 -> 3.40M."""
    if n is None:
        return DASH
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def format_cost(name: str, value: float | None) -> str:
    if value is None:
        return DASH
    return format_count(value) if name in ("trainable", "stored/task") else f"{value:.1f}"


def experiment_table(results_list: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (text) of the per-experiment table: benchmark, method label, protocol, order, seeds, every
    metric as mean ± std, the cost."""
    header = ["benchmark", "method", "protocol", "order", "seeds", *METRIC_NAMES,
              *(COST_HEADERS[c] for c in COST_NAMES)]
    rows = [[e.benchmark, e.label, e.protocol, e.order, str(e.n), *(format_stats(e.metrics[m]) for m in METRIC_NAMES),
             *(format_cost(c, e.cost[c]) for c in COST_NAMES)] for e in experiments(results_list)]
    return header, rows


def orders_table(results_list: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-configuration table: AP per order (mean over seeds), Avg AP and Avg BWT."""
    confs = configurations(results_list)
    orders = sorted({o for c in confs for o in c.orders})
    rows = []
    for c in confs:
        cells = [DASH if (exp := c.orders.get(o)) is None or exp.metrics["AP"] is None
                 else f"{exp.metrics['AP'][0]:.2f}" for o in orders]
        avg = [DASH if c.avg[m] is None else f"{c.avg[m]:.2f}" for m in ("AP", "BWT")]
        rows.append([c.benchmark, c.label, c.protocol, *cells, *avg])
    return ["benchmark", "method", "protocol", *(f"order {o}" for o in orders), "Avg AP", "Avg BWT"], rows


EXPERIMENT_CAPTION = ("Mean ± std over seeds (sample std, shown from 2 runs on); one row per experiment (runs that "
                      "differ only in the seed):")
ORDERS_CAPTION = "AP per order (mean over seeds) and the average over orders:"


def aggregate_markdown(results_list: Sequence[dict]) -> str:
    """Two tables: every metric as mean ± std over seeds per experiment (with protocol and cost); AP per order and
    the Avg over orders per configuration. The protocol legend is ``tables.PROTOCOL_LEGEND``."""
    header, rows = experiment_table(results_list)
    out = [EXPERIMENT_CAPTION, "", table(header, [[cell(v) for v in r] for r in rows], 4)]
    header, rows = orders_table(results_list)
    out += ["", ORDERS_CAPTION, "", table(header, [[cell(v) for v in r] for r in rows], 3),
            "", f"Protocol: {PROTOCOL_LEGEND}."]
    return "\n".join(out)


def plot_ap_distribution(results_list: Sequence[dict], path):
    """Box plot (with the individual runs as points) of AP per experiment across seeds."""
    from .figures import plot_ap_distribution as plot

    exps = [e for e in experiments(results_list) if e.metrics["AP"] is not None]
    several = len({e.benchmark for e in exps}) > 1 or len({e.order for e in exps}) > 1
    names = [e.label + (f" [{e.benchmark} {e.order}]" if several else "") for e in exps]
    return plot(names, [_metric_values(e.runs, "AP") for e in exps], path)
