"""Repeated runs: a seed sweep writes one child run per seed; the report's mean ± std equal a hand computation."""
import json
import math
import re

import pytest

from continual_lm.cli import main
from continual_lm.eval.aggregate import aggregate_markdown, mean_std, summarise


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
    assert main(["report", str(parent), "--plot", str(tmp_path / "bars.png")]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"\| demo \| seqlora \| – \| 1 \| 2 \| {mean:.2f} ± {std:.2f} \|", out), out
    assert (tmp_path / "bars_ap_box.png").read_bytes()[:4] == b"\x89PNG"
    assert main(argv) == 0  # a second sweep reuses the finished children
    assert "finished earlier, reused" in capsys.readouterr().out
