"""Repeated runs: a seed sweep writes one child run per seed; the report's mean ± std equal a hand computation."""
import json
import math
import re

import pytest

from continual_lm.cli import main
from continual_lm.eval.aggregate import aggregate_markdown, mean_std, summarise
from continual_lm.train.checkpoint import sweep_contents


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0, 6.0]) == (3.0, pytest.approx(math.sqrt(14 / 3)))
    assert mean_std([5.0]) == (5.0, 0.0)


def _fake(method, order, seed, ap, bwt):
    return {"benchmark": "standard", "method": method, "order": order, "seed": seed,
            "metrics": {"AP": ap, "F.Ra": None, "FWT": None, "BWT": bwt}}


def test_avg_over_orders_is_the_mean_of_per_order_means():
    runs = [_fake("inclora", "1", 1, 60.0, -2.0), _fake("inclora", "1", 2, 70.0, -4.0),
            _fake("inclora", "2", 1, 40.0, -6.0)]
    (row,) = summarise(runs)
    assert row["orders"]["1"]["AP"][:2] == (65.0, pytest.approx(math.sqrt(50)))
    assert row["avg"]["AP"] == pytest.approx((65.0 + 40.0) / 2)
    assert row["avg"]["BWT"] == pytest.approx((-3.0 - 6.0) / 2)
    table = aggregate_markdown(runs)
    assert "| standard | inclora | ? | 1 | 2 | 65.00 ± 7.07 |" in table  # ?: the fake runs record no protocol
    assert "| standard | inclora | ? | 65.00 | 40.00 | 52.50 | -4.50 |" in table


def test_seed_sweep_and_report(tmp_path, capsys):
    parent = tmp_path / "sweep"
    argv = ["run", "--benchmark", "demo", "--method", "seqlora", "--model", "tiny-random-llama", "--seeds", "1", "2",
            "--max-train-per-task", "4", "--max-test-per-task", "4", "--batch-size", "4", "--max-input-length", "48",
            "--max-target-length", "4", "--output-dir", str(parent), "--no-progress"]
    assert main(argv) == 0
    children = sorted(p.parent.name for p in parent.glob("*/results.json"))
    assert children == ["seed1", "seed2"]  # no --order given: the default order
    for child in children:
        assert (parent / child / "task_trajectories.png").read_bytes()[:4] == b"\x89PNG"
    aps = [json.loads((parent / c / "results.json").read_text())["metrics"]["AP"] for c in children]
    mean, std = mean_std(aps)
    capsys.readouterr()
    assert main(["report", str(parent)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"\| demo \| seqlora \| – \| 1 \| 2 \| {mean:.2f} ± {std:.2f} \|", out), out
    assert (parent / "comparison" / "comparison_ap_box.png").read_bytes()[:4] == b"\x89PNG"  # beside the runs
    assert sweep_contents(parent).kind == "run"  # the report's folder does not make the sweep foreign
    assert main(argv) == 0  # a second sweep reuses the finished children
    assert "finished earlier, reused" in capsys.readouterr().out


def _configured(seed, ap, model="tiny-random-llama", lr=0.005, order="1", migu_threshold=None, method="seqlora"):
    options = {method: {}} if migu_threshold is None else {method: {}, "migu": {"threshold": migu_threshold}}
    config = {"benchmark": "demo", "order": order, "method": method, "model": model, "seed": seed, "lr": lr,
              "epochs": 1, "lora": {"r": 8, "alpha": 32.0}, "method_options": options}
    return {"benchmark": "demo", "method": method, "order": order, "seed": seed, "model": model, "config": config,
            "metrics": {"AP": ap, "F.Ra": 1.0, "FWT": None, "BWT": -ap / 10}, "batch": {"global": 4}}


def test_runs_of_other_models_or_options_are_never_averaged():
    """The issue's case: two tiny-llama seeds and a tiny-t5 run with another lr were one "mean ± std over 3 seeds";
    runs that differ in a method option only were "seqlora #1/#2"."""
    runs = [_configured(1, 60.0), _configured(2, 70.0), _configured(3, 10.0, model="tiny-random-t5", lr=0.001)]
    rows = summarise(runs)
    assert [row["runs"] for row in rows] == [2, 1]
    assert rows[0]["orders"]["1"]["AP"][:3] == (65.0, pytest.approx(math.sqrt(50)), 2)
    assert rows[1]["orders"]["1"]["AP"] == (10.0, None, 1)  # one run: no std, never a "± 0.00"
    assert [row["label"] for row in rows] == ["seqlora (lr=0.005, model=tiny-random-llama)",
                                              "seqlora (lr=0.001, model=tiny-random-t5)"]
    table = aggregate_markdown(runs)
    assert "| demo | seqlora (lr=0.005, model=tiny-random-llama) | ? | 1 | 2 | 65.00 ± 7.07 |" in table
    assert "| demo | seqlora (lr=0.001, model=tiny-random-t5) | ? | 1 | 1 | 10.00 |" in table

    options = [_configured(1, 50.0, migu_threshold=0.5, method="seqlora+migu"),
               _configured(1, 40.0, migu_threshold=0.7, method="seqlora+migu")]
    assert [row["label"] for row in summarise(options)] == ["seqlora+migu (migu.threshold=0.5)",
                                                            "seqlora+migu (migu.threshold=0.7)"]
    from continual_lm.eval.report import comparison_markdown

    lines = comparison_markdown(options).splitlines()
    assert lines[2].startswith("| seqlora+migu (migu.threshold=0.5) |")
    assert lines[3].startswith("| seqlora+migu (migu.threshold=0.7) |")


def test_orders_of_one_configuration_make_its_avg_and_seeds_do_not_split_it():
    runs = [_configured(1, 60.0), _configured(2, 70.0), _configured(1, 40.0, order="2"),
            _configured(1, 90.0, lr=0.01)]
    rows = summarise(runs)
    assert [(row["label"], sorted(row["orders"])) for row in rows] == [("seqlora (lr=0.005)", ["1", "2"]),
                                                                       ("seqlora (lr=0.01)", ["1"])]
    assert rows[0]["avg"]["AP"] == pytest.approx((65.0 + 40.0) / 2)
    assert rows[1]["avg"]["AP"] == 90.0
