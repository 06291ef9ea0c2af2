"""The comparison in the formats people paste: CSV and LaTeX parse back to the numbers the runs hold, and the HTML
report is one self-contained file that a real browser renders (headless Chromium, when installed)."""
import csv
import io
import math
import re
import shutil
import subprocess

import pytest

from continual_lm.cli import main
from continual_lm.eval.comparison import write_comparison
from continual_lm.eval.formats import experiments_csv, experiments_latex
from continual_lm.eval.html import comparison_html

TASKS = ["sst2", "boolq", "summ"]


def _run(method, seed, ap, fra, bwt, lr=0.005, model="tiny-random-llama", trainable=3584, stored=1194.7):
    final = [ap - 5.0, ap, ap + 5.0]
    return {"benchmark": "demo", "order": "1", "method": method, "model": model, "seed": seed, "tasks": TASKS,
            "metric_per_task": {"sst2": "accuracy", "boolq": "accuracy", "summ": "rougeL"},
            "matrix": [[90.0, None, None], [80.0, 70.0, None], final],
            "metrics": {"AP": ap, "F.Ra": fra, "FWT": None, "BWT": bwt},
            "timing": {"train_s": 10.0 + seed, "eval_s": 2.0}, "batch": {"global": 4},
            "protocol": {"replay": False, "pseudo_samples": False, "task_id_at_train": method != "seqlora",
                         "task_id_at_test": False, "task_names_in_prompts": False},
            "parameters": {"trainable": trainable, "stored": stored * 3, "stored_per_task": stored},
            "config": {"benchmark": "demo", "order": "1", "method": method, "model": model, "seed": seed, "lr": lr,
                       "method_options": {method: {}}}}


RUNS = [_run("seqlora", 1, 60.0, 20.0, -20.0), _run("seqlora", 2, 70.0, 10.0, -10.0),
        _run("seqlora", 1, 55.0, 5.0, -4.0, lr=0.001), _run("inc_lora", 1, 70.0, 8.0, -8.0, trainable=7168)]


def test_csv_parses_back_to_the_runs_numbers():
    rows = list(csv.DictReader(io.StringIO(experiments_csv(RUNS))))
    assert [r["label"] for r in rows] == ["seqlora (lr=0.005)", "seqlora (lr=0.001)", "inc_lora"]
    first = rows[0]
    assert (first["benchmark"], first["order"], first["method"], first["seeds"]) == ("demo", "1", "seqlora", "1;2")
    assert float(first["AP_mean"]) == 65.0 and float(first["AP_std"]) == pytest.approx(math.sqrt(50))
    assert int(first["AP_n"]) == 2 and float(first["F.Ra_mean"]) == 15.0 and float(first["BWT_mean"]) == -15.0
    assert first["FWT_mean"] == "" and first["FWT_n"] == "0"
    assert float(first["train_s"]) == 11.5 and float(first["trainable_params"]) == 3584
    assert float(first["stored_params_per_task"]) == 1194.7
    single = rows[1]  # one run: a mean and n, no standard deviation
    assert (float(single["AP_mean"]), single["AP_std"], single["AP_n"]) == (55.0, "", "1")
    assert rows[2]["protocol"] == "Ttr" and rows[0]["protocol"] == "–"


def _latex_rows(text):
    body = text.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [[c.strip() for c in line.removesuffix("\\\\").split(" & ")] for line in body.strip().splitlines()]


def _parse_cell(cell):
    """"$\\mathbf{65.00 \\pm 7.07}$" -> (65.0, 7.07, True)."""
    match = re.fullmatch(r"\$(\\mathbf\{)?(-?[\d.]+)(?: \\pm ([\d.]+))?\}?\$", cell)
    assert match, cell
    return float(match[2]), None if match[3] is None else float(match[3]), bool(match[1])


def test_latex_is_booktabs_with_mean_pm_std_and_the_best_per_column_in_bold():
    text = experiments_latex(RUNS)
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text and "\\hline" not in text
    rows = _latex_rows(text)
    assert [r[2] for r in rows] == ["seqlora (lr=0.005)", "seqlora (lr=0.001)", "inc\\_lora"]  # escaped
    ap = [_parse_cell(r[5]) for r in rows]
    fra = [_parse_cell(r[6]) for r in rows]
    bwt = [_parse_cell(r[8]) for r in rows]
    assert ap[0] == (65.0, pytest.approx(7.07), False) and ap[1] == (55.0, None, False)
    assert ap[2] == (70.0, None, True)  # higher AP is better
    assert [f[2] for f in fra] == [False, True, False]  # lower forgetting is better: 5.0
    assert [b[2] for b in bwt] == [False, True, False]  # higher BWT is better: -4.0
    assert rows[0][7] == "--"  # FWT: no reference scores
    assert rows[2][3] == "Ttr" and rows[0][3] == "--"
    assert [r[9] for r in rows] == ["3.58K", "3.58K", "7.17K"]


def test_latex_ties_are_all_bold_and_blocks_are_compared_apart():
    other = dict(_run("seqlora", 1, 70.0, 8.0, -8.0), benchmark="superni")
    other["config"] = dict(other["config"], benchmark="superni")
    rows = _latex_rows(experiments_latex([_run("a", 1, 70.0, 8.0, -8.0), _run("b", 1, 70.0, 9.0, -8.0), other]))
    assert [_parse_cell(r[5])[2] for r in rows] == [True, True, True]  # a tie; superni is its own block


def test_html_is_self_contained():
    runs = RUNS[:2]  # one experiment, two seeds
    text = comparison_html(runs)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)  # nothing loaded from anywhere
    assert "<script" not in text and "<link" not in text
    # the bars, the AP box plot (repeated runs) and each run's score matrix and trajectories
    assert text.count("data:image/png;base64,") == 2 + 2 * len(runs)
    assert "seqlora (seed=1)" in text and '<td class="num best">65.00 ± 7.07</td>' in text  # best AP: bold


def test_report_writes_every_format_beside_the_runs(tmp_path, monkeypatch, capsys):
    import json

    for k, r in enumerate(RUNS):
        (tmp_path / "runs" / f"r{k}").mkdir(parents=True)
        (tmp_path / "runs" / f"r{k}" / "results.json").write_text(json.dumps(r))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(tmp_path / "runs")]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "comparison").iterdir()) == [
        "comparison.csv", "comparison.html", "comparison.md", "comparison.png", "comparison.tex",
        "comparison_ap_box.png"]
    assert list(elsewhere.iterdir()) == []  # nothing in the current directory
    out = capsys.readouterr().out
    assert (tmp_path / "runs" / "comparison" / "comparison.md").read_text().strip() in out
    assert main(["report", str(tmp_path / "runs" / "r0"), str(tmp_path / "runs" / "r3"), "--output",
                 str(tmp_path / "mine"), "--formats", "csv", "tex"]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["comparison.csv", "comparison.tex"]
    (tmp_path / "file").write_text("x")
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    # the old `--output table.md` (a file) is refused, not turned into a folder named table.md
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "table.md")]) == 2
    assert "--output is now the folder" in capsys.readouterr().err and not (tmp_path / "table.md").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (Debian: apt-get install "
                    "chromium); the HTML report is then checked for self-containment only")
def test_html_renders_in_headless_chromium(tmp_path):
    from matplotlib.image import imread

    page = write_comparison(RUNS[:2], tmp_path / "out", ["html"])[0]
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 0.05  # tables and figures drawn, not a blank page


def test_a_report_inside_a_run_directory_keeps_it_a_run(tmp_path):
    """`continual-lm report RUN_DIR` writes RUN_DIR/comparison/: --resume and --overwrite still see a run with nothing
    of the user's in it; a comparison/ folder holding anything else is the user's and stays protected."""
    import json

    from continual_lm.train.checkpoint import RunDir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"continual_lm_run": 1, "config": {}, "data": {}}))
    (run_dir / "results.json").write_text(json.dumps(RUNS[0]))
    assert main(["report", str(run_dir), "--formats", "md", "csv"]) == 0
    assert sorted(p.name for p in (run_dir / "comparison").iterdir()) == ["comparison.csv", "comparison.md"]
    assert RunDir(run_dir).contents().kind == "run" and RunDir(run_dir).contents().foreign == []
    (run_dir / "comparison" / "notes.txt").write_text("mine")
    assert RunDir(run_dir).contents().foreign == ["comparison/"]
