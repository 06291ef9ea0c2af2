import copy
import os

import pytest

from continual_lm.eval import report
from continual_lm.eval.report import (
    comparison_markdown,
    matrix_markdown,
    plot_comparison_bars,
    plot_matrix_heatmap,
    run_report_markdown,
    write_run_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_results(method="inclora", **over):
    r = {
        "benchmark": "demo",
        "order": "order1",
        "method": method,
        "model": "tiny-gpt2",
        "seed": 42,
        "tasks": ["sst2", "boolq", "summ"],
        "metric_per_task": {"sst2": "accuracy", "boolq": "accuracy", "summ": "rougeL"},
        "matrix": [[80.0, None, None], [82.0, 90.0, None], [60.0, 85.0, 75.25]],
        "single_task": None,
        "metrics": {"AP": 73.4167, "F.Ra": 13.5, "FWT": None, "BWT": -12.5},
        "timing": {"train_s": 12.34, "eval_s": 5.6},
        "versions": {"continual_lm": "0.1.0", "torch": "2.4.0"},
    }
    r.update(over)
    return r


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC


def no_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")] == []


def test_matrix_markdown():
    md = matrix_markdown(make_results())
    lines = md.splitlines()
    assert lines[0] == "|  | sst2 | boolq | summ |"
    assert lines[2] == "| after sst2 | 80.0 | – | – |"
    assert lines[3] == "| after boolq | 82.0 | 90.0 | – |"
    assert lines[4] == "| after summ | 60.0 | 85.0 | 75.2 |"
    assert len(lines) == 5


def test_run_report_markdown_contents():
    md = run_report_markdown(make_results())
    assert md.startswith("# Run report: inclora on demo\n")
    for line in ("- **benchmark**: demo", "- **order**: order1", "- **method**: inclora",
                 "- **model**: tiny-gpt2", "- **seed**: 42"):
        assert line in md
    assert "| AP | F.Ra | FWT | BWT |" in md
    assert "| 73.42 | 13.50 | – | -12.50 |" in md
    assert "--single-task-from RUN_DIR" in md  # explains why FWT is missing
    assert "| after boolq | 82.0 | 90.0 | – |" in md
    # final scores with metric names
    assert "| sst2 | accuracy | 60.00 |" in md
    assert "| boolq | accuracy | 85.00 |" in md
    assert "| summ | rougeL | 75.25 |" in md
    assert "| – | – | 12.3 | 5.6 |" in md and "Total time: 17.9 s." in md  # cost: no parameter counts recorded
    assert "- torch: 2.4.0" in md
    assert "## Figures" not in md
    assert "## Score matrix" in md  # accuracy and Rouge-L columns: not an "Accuracy matrix"
    assert "## Configuration" not in md  # nothing recorded


def test_run_report_names_the_metric_and_lists_the_resolved_options():
    r = make_results(metric_per_task={"sst2": "accuracy", "boolq": "accuracy", "summ": "accuracy"},
                     config={"method": "inclora", "lr": 0.005, "lora": {"r": 8, "alpha": 32.0},
                             "method_options": {"inclora": {}}},
                     parameters={"trainable": 3584, "stored": 10752, "stored_per_task": 3584.0, "model": 1000})
    md = run_report_markdown(r)
    assert "## Accuracy matrix" in md
    assert "- lr: 0.005" in md and "- lora.r: 8" in md and "- lora.alpha: 32.0" in md
    assert "| 3.58K | 3.58K | 12.3 | 5.6 |" in md

def test_run_report_with_single_task_column():
    r = make_results(single_task={"sst2": 85.0, "boolq": 88.0, "summ": None},
                     metrics={"AP": 73.4167, "F.Ra": 13.5, "FWT": -1.5, "BWT": -12.5})
    md = run_report_markdown(r)
    assert "| task | metric | final | single-task |" in md
    assert "| sst2 | accuracy | 60.00 | 85.00 |" in md
    assert "| summ | rougeL | 75.25 | – |" in md
    assert "| 73.42 | 13.50 | -1.50 | -12.50 |" in md
    assert "--single-task-from" not in md


def test_single_run_final_scores_are_the_diagonal():
    r = make_results(method="single", matrix=[[80.0, None, None], [None, 90.0, None], [None, None, 70.0]],
                     metrics={"AP": 80.0, "F.Ra": 0.0, "FWT": None, "BWT": 0.0})
    md = run_report_markdown(r)
    assert "| sst2 | accuracy | 80.00 |" in md
    assert "| boolq | accuracy | 90.00 |" in md
    assert "diagonal" in md


def test_metrics_computed_when_missing():
    r = make_results()
    del r["metrics"]
    md = run_report_markdown(r)
    assert "| 73.42 | 13.50 | – | -12.50 |" in md


def test_comparison_markdown():
    a = make_results("inclora")
    b = make_results("seqlora", tasks=["sst2", "boolq", "qa"],
                     metric_per_task={"sst2": "accuracy", "boolq": "accuracy", "qa": "rougeL"},
                     matrix=[[70.0, None, None], [50.0, 80.0, None], [40.0, 60.0, 55.5]],
                     metrics={"AP": 51.8333, "F.Ra": 25.0, "FWT": None, "BWT": -25.0})
    md = comparison_markdown([a, b])
    lines = md.splitlines()
    assert lines[0] == ("| method | protocol | AP | F.Ra | FWT | BWT | trainable params | stored params/task | train (s) "
                        "| eval (s) | sst2 | boolq | summ | qa |")
    assert lines[2] == "| inclora | ? | 73.42 | 13.50 | – | -12.50 | – | – | 12.3 | 5.6 | 60.00 | 85.00 | 75.25 | – |"
    assert lines[3] == "| seqlora | ? | 51.83 | 25.00 | – | -25.00 | – | – | 12.3 | 5.6 | 40.00 | 60.00 | – | 55.50 |"
    assert "benchmark" not in lines[0] and "order" not in lines[0]


def test_comparison_markdown_adds_differing_benchmark_and_order():
    a = make_results("inclora")
    b = make_results("olora", order="order2")
    c = make_results("olora", benchmark="superni", order="order2")
    lines = comparison_markdown([a, b, c]).splitlines()
    assert lines[0].startswith("| method | protocol | benchmark | order | AP |")
    assert lines[2].startswith("| inclora | ? | demo | order1 | 73.42 |")
    assert lines[3].startswith("| olora | ? | demo | order2 |")
    assert lines[4].startswith("| olora | ? | superni | order2 |")
    with pytest.raises(ValueError):
        comparison_markdown([])


def test_markdown_escapes_pipes():
    r = make_results(tasks=["a|b", "boolq", "summ"])
    assert "| after a\\|b |" in matrix_markdown(r)


def test_plot_matrix_heatmap(tmp_path):
    out = plot_matrix_heatmap(make_results(), tmp_path / "m.png")
    assert out == tmp_path / "m.png"
    assert_png(out)
    assert no_temp_files(tmp_path)


def test_plot_comparison_bars(tmp_path):
    runs = [make_results("inclora"), make_results("seqlora"), make_results("inclora", seed=1),
            make_results("mtl", metrics={"AP": 90.0, "F.Ra": None, "FWT": None, "BWT": None})]
    out = plot_comparison_bars(runs, tmp_path / "bars.png")
    assert_png(out)
    assert no_temp_files(tmp_path)
    assert report.run_labels(runs, hide=()) == ["inclora (seed=42)", "seqlora", "inclora (seed=1)", "mtl"]
    assert report.run_labels(runs) == ["inclora", "seqlora", "inclora", "mtl"]  # the seed has its own column
    assert report.run_labels([runs[0], runs[0]]) == ["inclora #1", "inclora #2"]  # alike in everything


def test_write_run_report(tmp_path):
    (tmp_path / "attention_heatmap.png").write_bytes(PNG_MAGIC + b"x")
    (tmp_path / "notes.png").write_bytes(PNG_MAGIC + b"x")
    write_run_report(tmp_path, make_results())
    assert_png(tmp_path / "accuracy_matrix.png")
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Figures" in md
    assert "![accuracy_matrix](accuracy_matrix.png)" in md
    assert "![attention_heatmap](attention_heatmap.png)" in md
    assert "notes.png" not in md
    assert "| 73.42 | 13.50 | – | -12.50 |" in md
    assert_png(tmp_path / "task_trajectories.png")
    assert "![task_trajectories](task_trajectories.png)" in md
    assert sorted(os.listdir(tmp_path)) == ["accuracy_matrix.png", "attention_heatmap.png", "notes.png", "report.md",
                                            "task_trajectories.png"]
    # rewriting replaces the files and still leaves no temp files
    r = make_results(metrics={"AP": 1.0, "F.Ra": None, "FWT": None, "BWT": None})
    write_run_report(tmp_path, r)
    assert "| 1.00 | – | – | – |" in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert no_temp_files(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    from continual_lm import io_utils

    monkeypatch.setattr(io_utils.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io_utils.atomic_write_bytes(target, b"new")
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["report.md"]


def test_inputs_not_mutated(tmp_path):
    r = make_results()
    before = copy.deepcopy(r)
    run_report_markdown(r)
    comparison_markdown([r])
    plot_matrix_heatmap(r, tmp_path / "m.png")
    assert r == before


def test_pyplot_not_imported_by_report(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from continual_lm.eval.report import plot_matrix_heatmap; "
            "from tests_helper_results import R; plot_matrix_heatmap(R, sys.argv[1]); "
            "print('matplotlib.pyplot' in sys.modules)")
    (tmp_path / "tests_helper_results.py").write_text(f"R = {make_results()!r}\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.png")], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
