"""bench/rows_changed.py: deltas per row, matrix identity and the like-for-like run-time ratio, on hand-made runs."""
import json

import pytest

from helpers import load_script


def write_run(root, benchmark, method, ap, matrix, train_s, eval_s):
    d = root / benchmark / method
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "metrics": {"AP": ap, "F.Ra": 1.0, "FWT": None, "BWT": -1.0}, "matrix": matrix,
        "timing": {"train_s": train_s, "eval_s": eval_s}}))


def test_rows_changed_compares_common_rows_only(tmp_path):
    module = load_script("bench/rows_changed.py")
    old, new = tmp_path / "old", tmp_path / "new"
    write_run(old, "standard", "seqlora", 40.0, [[40.0]], 300, 60)
    write_run(old, "standard", "ewc", 50.0, [[50.0]], 600, 60)  # dropped in the new table
    write_run(new, "standard", "seqlora", 45.5, [[45.5]], 150, 30)
    write_run(new, "standard", "inflora", 60.0, [[60.0]], 9999, 9999)  # new row: not in the ratio
    (old / "invocations.json").write_text(json.dumps([{"wall_s": 3600.0}, {"wall_s": 1800.0}]))
    result = module.compare(old, new)
    assert [r["row"] for r in result["rows"]] == ["standard/seqlora"]
    row = result["rows"][0]
    assert row["before"]["AP"] == 40.0 and row["after"]["AP"] == 45.5 and not row["matrix_identical"]
    assert result["common_run_time_h"]["ratio_old_over_new"] == 2.0  # 360 s -> 180 s
    assert result["only_old"] == ["standard/ewc"] and result["only_new"] == ["standard/inflora"]
    assert result["invocations_wall_h"] == {"old": 1.5, "new": 0.0}
    text = module.markdown(result, old, new)
    assert "| standard/seqlora | 40.00 → 45.50 | +5.50 |" in text and "(old / new: **2.0x**)" in text
    assert "FWT" in text and "| – → – | – |" in text  # a null metric is shown, not crashed on


def test_rows_changed_refuses_a_missing_folder(tmp_path, capsys):
    module = load_script("bench/rows_changed.py")
    with pytest.raises(SystemExit) as stop:
        module.main([str(tmp_path / "nope"), str(tmp_path)])
    assert stop.value.code == 2
    assert "OLD_ROOT" in capsys.readouterr().err
