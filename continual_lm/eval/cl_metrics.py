"""Continual-learning metrics from the accuracy matrix, defined once (docs/metrics.md is the specification).

``matrix[i][j]`` is the score (0..100) on task j after training task i (0-based), or None where not evaluated.
With T tasks and ``a[T-1]`` the final row (0-based):

- AP   = mean over j of a[T-1][j]
- F.Ra = mean over j < T-1 of (max over l in j..T-2 of a[l][j]) - a[T-1][j]
- FWT  = mean over j of a[j][j] - s_j          (s_j: single-task reference score; None without references)
- BWT  = mean over j < T-1 of a[T-1][j] - a[j][j]   (divided by the number of terms, at most T-1, never T)

A term that needs a None entry is skipped (the max in F.Ra runs over the non-None entries); a metric with no
terms is None.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

METRIC_NAMES = ("AP", "F.Ra", "FWT", "BWT")

Score = float | None


def _is_score(v) -> bool:
    return v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v))


def _check_vector(name: str, values, t: int) -> list[Score]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of {t} scores (numbers or None), got {type(values).__name__}")
    if len(values) != t:
        raise ValueError(f"{name} has {len(values)} entries but the matrix has {t} tasks; expected {t}")
    for j, v in enumerate(values):
        if not _is_score(v):
            raise ValueError(f"{name}[{j}] is {v!r}; expected a finite number or None")
    return [None if v is None else float(v) for v in values]


def validate_matrix(matrix) -> list[list[Score]]:
    """Check that ``matrix`` is a non-empty square list of lists of finite numbers or None; return it as floats."""
    if isinstance(matrix, (str, bytes)) or not isinstance(matrix, Sequence):
        raise ValueError(f"the accuracy matrix must be a list of rows, got {type(matrix).__name__}")
    t = len(matrix)
    if t == 0:
        raise ValueError("the accuracy matrix is empty; expected T x T scores for T >= 1 tasks")
    rows = []
    for i, row in enumerate(matrix):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise ValueError(f"matrix row {i} must be a list of scores, got {type(row).__name__}")
        if len(row) != t:
            raise ValueError(f"the accuracy matrix must be square: row {i} has {len(row)} entries, "
                             f"expected {t} (one per task)")
        for j, v in enumerate(row):
            if not _is_score(v):
                raise ValueError(f"matrix[{i}][{j}] is {v!r}; expected a finite number or None")
        rows.append([None if v is None else float(v) for v in row])
    return rows


def _mean(terms: list[float]) -> Score:
    if not terms:
        return None
    return round(sum(terms) / len(terms), 4) + 0.0  # + 0.0 turns -0.0 into 0.0


def cl_metrics(matrix, single_task: Sequence[Score] | None = None,
               final_row: Sequence[Score] | None = None) -> dict[str, Score]:
    """AP, F.Ra, FWT and BWT of an accuracy matrix, rounded to 4 decimals (None where undefined).

    ``single_task[j]`` is the single-task reference score s_j of task j (FWT is None without it).
    ``final_row`` replaces the matrix's last row as the final scores a[T]; the ``single`` reference run uses it,
    because each of its tasks ends with its own model, so its final scores are the diagonal.
    """
    a = validate_matrix(matrix)
    t = len(a)
    s = None if single_task is None else _check_vector("single_task", single_task, t)
    final = a[t - 1] if final_row is None else _check_vector("final_row", final_row, t)

    ap = [v for v in final if v is not None]

    fra, bwt = [], []
    for j in range(t - 1):
        if final[j] is None:
            continue
        seen = [a[l][j] for l in range(j, t - 1) if a[l][j] is not None]
        if seen:
            fra.append(max(seen) - final[j])
        if a[j][j] is not None:
            bwt.append(final[j] - a[j][j])

    fwt = None
    if s is not None:
        fwt = _mean([a[j][j] - s[j] for j in range(t) if a[j][j] is not None and s[j] is not None])

    return {"AP": _mean(ap), "F.Ra": _mean(fra), "FWT": fwt, "BWT": _mean(bwt)}


def metrics_without_cells(t: int, skipped: set[tuple[int, int]]) -> dict[str, str]:
    """The metrics that need a cell of ``skipped`` (cells ``(i, j)`` a run chose not to evaluate, e.g. with
    --eval-every), each with the cells it needs: computing them from the remaining terms would give another number,
    so they are reported as None with this reason instead. AP needs only the final scores."""
    needs = {
        "F.Ra": ({(l, j) for j in range(t - 1) for l in range(j, t - 1)},
                 "every score of each earlier task before the last task (a[l][j], l = j..T-1)"),
        "FWT": ({(j, j) for j in range(t)}, "each task's score right after its training (a[j][j])"),
        "BWT": ({(j, j) for j in range(t - 1)}, "each earlier task's score right after its training (a[j][j])"),
    }
    return {name: what for name, (cells, what) in needs.items() if cells & skipped}
