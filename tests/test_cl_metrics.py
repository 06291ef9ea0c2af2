import math
import re
from pathlib import Path

import pytest

from continual_lm.eval.cl_metrics import cl_metrics, validate_matrix

KEYS = {"AP", "F.Ra", "FWT", "BWT"}
DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"

WORKED = [[80, None, None], [82, 90, None], [60, 85, 75]]
WORKED_S = [85, 88, 80]
WORKED_EXPECTED = {"AP": 73.3333, "F.Ra": 13.5, "FWT": -2.6667, "BWT": -12.5}


def test_worked_example_from_docs():
    assert cl_metrics(WORKED, single_task=WORKED_S) == WORKED_EXPECTED
    assert cl_metrics(WORKED) == {**WORKED_EXPECTED, "FWT": None}


def test_docs_state_the_worked_example():
    text = DOC.read_text(encoding="utf-8")
    assert "cl_metrics([[80, None, None], [82, 90, None], [60, 85, 75]], single_task=[85, 88, 80])" in text
    assert "{'AP': 73.3333, 'F.Ra': 13.5, 'FWT': -2.6667, 'BWT': -12.5}" in text
    # the doc's table is the same matrix
    for row in ("| after task 1 | 80 | – | – |", "| after task 2 | 82 | 90 | – |", "| after task 3 | 60 | 85 | 75 |"):
        assert row in text
    assert re.search(r"hard-coded FWT constant", text)
    assert re.search(r"BWT divides by \$T-1\$, not \$T\$", text)


def test_full_lower_triangular_4x4():
    a = [
        [70.0, None, None, None],
        [65.0, 80.0, None, None],
        [72.0, 60.0, 90.0, None],
        [50.0, 55.0, 85.0, 40.0],
    ]
    s = [75.0, 70.0, 88.0, 50.0]
    m = cl_metrics(a, single_task=s)
    assert set(m) == KEYS
    assert m["AP"] == round((50 + 55 + 85 + 40) / 4, 4)  # 57.5
    # F.Ra: j=0 max(70,65,72)=72 -> 22; j=1 max(80,60)=80 -> 25; j=2 max(90)=90 -> 5
    assert m["F.Ra"] == round((22 + 25 + 5) / 3, 4)  # 17.3333
    # BWT: (50-70) + (55-80) + (85-90) over T-1 = 3
    assert m["BWT"] == round((-20 - 25 - 5) / 3, 4)  # -16.6667
    assert m["BWT"] != round((-20 - 25 - 5) / 4, 4)  # not divided by T
    # FWT: (70-75) + (80-70) + (90-88) + (40-50) over T = 4
    assert m["FWT"] == round((-5 + 10 + 2 - 10) / 4, 4)  # -0.75


def test_upper_triangle_is_not_used():
    lower = [[80, None], [70, 90]]
    full = [[80, 5], [70, 90]]
    assert cl_metrics(lower, [60, 60]) == cl_metrics(full, [60, 60])


def test_no_forgetting_gives_zero_not_negative_zero():
    m = cl_metrics([[50, None], [50, 60]], single_task=[50, 60])
    assert m == {"AP": 55.0, "F.Ra": 0.0, "FWT": 0.0, "BWT": 0.0}
    assert math.copysign(1, m["BWT"]) == 1 and math.copysign(1, m["FWT"]) == 1


def test_none_entries_are_skipped():
    a = [
        [80, None, None],
        [None, 70, None],
        [60, None, 50],
    ]
    m = cl_metrics(a, single_task=[90, 60, 40])
    # AP over the non-None final entries: (60 + 50) / 2
    assert m["AP"] == 55.0
    # F.Ra: j=0 max over non-None of a[0][0], a[1][0] = 80 -> 20; j=1 final is None -> skipped
    assert m["F.Ra"] == 20.0
    # BWT: j=0 60-80 = -20; j=1 skipped
    assert m["BWT"] == -20.0
    # FWT: (80-90) + (70-60) + (50-40) over 3
    assert m["FWT"] == round(10 / 3, 4)


def test_fra_term_skipped_when_no_earlier_entry():
    a = [
        [None, None, None],
        [None, 70, None],
        [40, 65, 30],
    ]
    m = cl_metrics(a)
    # j=0: a[0][0], a[1][0] both None -> no F.Ra term, no BWT term; j=1: 70-65 = 5, 65-70 = -5
    assert m["F.Ra"] == 5.0
    assert m["BWT"] == -5.0
    assert m["AP"] == 45.0


def test_metric_with_no_terms_is_none():
    a = [[None, None], [None, None]]
    assert cl_metrics(a, single_task=[50, 50]) == {"AP": None, "F.Ra": None, "FWT": None, "BWT": None}


def test_single_task_with_none_entries():
    a = [[80, None, None], [82, 90, None], [60, 85, 75]]
    m = cl_metrics(a, single_task=[85, None, 80])
    # only j=0 and j=2: (80-85) + (75-80) over 2
    assert m["FWT"] == -5.0
    assert cl_metrics(a, single_task=[None, None, None])["FWT"] is None


def test_t_equals_one():
    assert cl_metrics([[42.5]]) == {"AP": 42.5, "F.Ra": None, "FWT": None, "BWT": None}
    assert cl_metrics([[42.5]], single_task=[40.0]) == {"AP": 42.5, "F.Ra": None, "FWT": 2.5, "BWT": None}
    assert cl_metrics([[None]]) == {"AP": None, "F.Ra": None, "FWT": None, "BWT": None}


def test_final_row_overrides_last_row():
    # a `single` reference run: each task ends with its own model, so the final scores are the diagonal
    a = [[80, None, None], [None, 90, None], [None, None, 75]]
    diag = [80, 90, 75]
    m = cl_metrics(a, single_task=diag, final_row=diag)
    assert m == {"AP": round(245 / 3, 4), "F.Ra": 0.0, "FWT": 0.0, "BWT": 0.0}
    # without final_row, the last row has Nones for the earlier tasks
    assert cl_metrics(a) == {"AP": 75.0, "F.Ra": None, "FWT": None, "BWT": None}


def test_final_row_used_for_fra_and_bwt_but_not_for_max():
    a = [[80, None], [99, 90]]  # a[T] row (99, 90) is replaced
    m = cl_metrics(a, final_row=[70, 90])
    # F.Ra j=0: max over l in 0..T-2 = a[0][0] = 80 -> 80-70 = 10; BWT: 70-80 = -10
    assert m == {"AP": 80.0, "F.Ra": 10.0, "FWT": None, "BWT": -10.0}


def test_rounding_to_four_decimals():
    m = cl_metrics([[100 / 3, None], [10 / 3, 20 / 7]])
    assert m["AP"] == round((10 / 3 + 20 / 7) / 2, 4)
    assert m["F.Ra"] == 30.0
    assert m["BWT"] == -30.0


def test_accepts_ints_and_tuples():
    assert cl_metrics(((1, None), (2, 3)))["AP"] == 2.5
    assert validate_matrix([[1, None], [2, 3]]) == [[1.0, None], [2.0, 3.0]]


@pytest.mark.parametrize(
    "matrix, single, final, message",
    [
        ([], None, None, "empty"),
        ([[1, 2], [3]], None, None, "square: row 1 has 1 entries, expected 2"),
        ([[1, 2]], None, None, "square: row 0 has 2 entries, expected 1"),
        ([[float("nan")]], None, None, r"matrix\[0\]\[0\] is nan"),
        ([[1, None], [float("inf"), 2]], None, None, r"matrix\[1\]\[0\] is inf"),
        ([["80"]], None, None, r"matrix\[0\]\[0\] is '80'"),
        ([[True]], None, None, r"matrix\[0\]\[0\] is True"),
        ("abc", None, None, "list of rows"),
        ([1, 2], None, None, "row 0 must be a list"),
        ([[1, None], [2, 3]], [1], None, "single_task has 1 entries but the matrix has 2 tasks"),
        ([[1, None], [2, 3]], [1, float("nan")], None, r"single_task\[1\] is nan"),
        ([[1, None], [2, 3]], None, [1, 2, 3], "final_row has 3 entries"),
        ([[1, None], [2, 3]], {"a": 1, "b": 2}, None, "single_task must be a list"),
    ],
)
def test_validation_errors(matrix, single, final, message):
    with pytest.raises(ValueError, match=message):
        cl_metrics(matrix, single_task=single, final_row=final)
