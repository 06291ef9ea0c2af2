"""The claims check: Student-t quantiles, paired intervals, the decision rule, routing accuracy, the claims' measures
on hand-made records, and bench/claims.py end to end on a tiny model (2 tasks, 2 seeds)."""
import importlib
import json
import math
import sys

import pytest
import torch

from continual_lm.eval.routing import routing_summary
from continual_lm.eval.stats import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, T_975, mean_interval,
                                     paired_interval, t_quantile_975, verdict)

from helpers import ROOT, first_table


def _t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t, by Simpson's rule on its density (independent of the table)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = lambda t: math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))  # noqa: E731
    n = 4000
    h = x / n
    total = density(0) + density(x) + sum((4 if k % 2 else 2) * density(k * h) for k in range(1, n))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", sorted(T_975))
def test_tabulated_t_quantiles_are_the_975_quantiles(df):
    assert _t_cdf(T_975[df], df) == pytest.approx(0.975, abs=1e-4)


def test_t_quantiles_between_and_beyond_the_table():
    assert t_quantile_975(2) == 4.303 and t_quantile_975(10) == 2.228
    for df in (35, 50, 90, 500):  # interpolated in 1/df: within 0.001 of the exact quantile
        assert _t_cdf(t_quantile_975(df), df) == pytest.approx(0.975, abs=2e-4)
    assert t_quantile_975(10**9) == pytest.approx(1.960, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_interval_on_a_hand_example():
    interval = mean_interval([1.0, 2.0, 3.0])  # mean 2, sample std 1, half width 4.303 / sqrt(3)
    assert (interval.mean, interval.std, interval.n) == (2.0, 1.0, 3)
    assert interval.low == pytest.approx(2 - 2.484338, abs=1e-6)
    assert interval.high == pytest.approx(2 + 2.484338, abs=1e-6)
    one = mean_interval([5.0])
    assert (one.mean, one.std, one.low, one.high) == (5.0, 0.0, None, None)


def test_paired_interval_is_the_interval_of_the_per_seed_differences():
    # a constant offset between two noisy rows: unpaired it would be lost in the seeds' spread, paired it is exact
    a, b = [50.0, 70.0, 60.0], [48.0, 67.0, 59.0]
    paired = paired_interval(a, b)
    assert paired == mean_interval([2.0, 3.0, 1.0])
    assert paired.low == pytest.approx(2 - 2.484338, abs=1e-6)
    with pytest.raises(ValueError):
        paired_interval([1.0, 2.0], [1.0])


@pytest.mark.parametrize("values,direction,bound,band,expected", [
    ([3.0, 4.0, 5.0], "greater", 0.0, None, REPRODUCED),        # [1.52, 6.48] > 0
    ([-3.0, -4.0, -5.0], "greater", 0.0, None, NOT_REPRODUCED),  # entirely below
    ([-3.0, 4.0, 1.0], "greater", 0.0, None, INCONCLUSIVE),     # straddles 0
    ([0.3, 0.4, 0.5], "greater", 0.0, 1.0, REPRODUCED),         # [0.15, 0.65]: above 0, however small
    ([-0.1, 0.1, 0.0], "greater", 0.0, 1.0, NOT_REPRODUCED),    # [-0.25, 0.25] inside the null band
    ([-0.1, 0.1, 0.0], "greater", 0.0, 0.2, INCONCLUSIVE),      # ... but not inside a narrower one
    ([-3.0, -4.0, -5.0], "less", 0.0, None, REPRODUCED),
    ([3.0, 4.0, 5.0], "less", 0.0, None, NOT_REPRODUCED),
    ([1.0, 1.5, 2.0], "less", 3.0, None, REPRODUCED),           # "near zero": below 3 ([0.88, 2.12])
    ([-1.0, -0.5, -1.5], "greater", -3.0, None, REPRODUCED),    # "at most 3 lower": [-2.24, 0.24] above -3
    ([-2.5, -2.0, -1.5], "greater", -3.0, None, INCONCLUSIVE),  # [-3.24, -0.76] reaches below -3
    ([4.0], "greater", 0.0, None, INCONCLUSIVE),                # one seed: no interval
])
def test_decision_rule(values, direction, bound, band, expected):
    interval = mean_interval(values)
    assert verdict(interval, direction, bound, band) == expected


def test_verdict_refuses_an_unknown_direction():
    with pytest.raises(ValueError):
        verdict(mean_interval([1.0, 2.0]), "up")


def test_routing_summary_on_a_hand_made_tensor():
    weights = torch.tensor([[0.1, 0.7, 0.2],   # own block 1 largest: margin 0.5
                            [0.5, 0.3, 0.2],   # block 0 largest: margin -0.2
                            [0.0, 0.4, 0.6]])  # margin -0.2
    summary = routing_summary(weights, own=1)
    expected = {"share": (0.7 + 0.3 + 0.4) / 3, "margin": 0.1 / 3, "top1": 1 / 3, "n": 3}
    assert summary == {key: pytest.approx(value, abs=1e-6) for key, value in expected.items()}  # rounded to 6
    assert routing_summary(torch.tensor([[1.0]]), own=0) == {"share": 1.0, "margin": 1.0, "top1": 1.0, "n": 1}
    assert routing_summary(torch.zeros(0, 2), own=0)["share"] is None
    with pytest.raises(ValueError):
        routing_summary(weights, own=3)


# ---- the claims' measures on hand-made records ------------------------------------------------------------------
@pytest.fixture(scope="module")
def claims():
    """bench/claims.py imported as the module `claims` (its dataclasses need a module in sys.modules)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield importlib.import_module("claims")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def _entry(share, margin=0.0):
    return {"share": share, "margin": margin, "top1": float(margin > 0), "n": 10}


def _run(claims, matrix, f_ra, routing=None):
    tasks = ["a", "b", "c"][:len(matrix)]
    results = {"tasks": tasks, "matrix": matrix, "metrics": {"AP": sum(matrix[-1]) / len(matrix[-1]),
                                                              "F.Ra": f_ra, "BWT": -f_ra},
               "timing": {"train_s": 60.0, "eval_s": 30.0}}
    return claims.Run(results, routing)


def _routing(groups, history):
    """history[t][task] = (share, margin) for every group."""
    return {"groups": groups, "after_task": [
        {"after": f"t{t}", "tasks": {task: {g: _entry(*v) for g in groups} for task, v in after.items()}}
        for t, after in enumerate(history)]}


def test_measures_read_the_matrix_and_the_routing_history(claims):
    routing = _routing(["all", "q_proj", "v_proj"], [
        {"a": (0.9, 0.8)},
        {"a": (0.6, 0.2), "b": (0.7, 0.4)},
        {"a": (0.5, 0.1), "b": (0.4, -0.1), "c": (0.8, 0.6)},
    ])
    run = _run(claims, [[80.0, None, None], [60.0, 70.0, None], [50.0, 65.0, 90.0]], 12.5, routing)
    measures = {name: fn for name, (_, fn) in claims.MEASURES.items()}
    assert measures["plasticity"](run) == pytest.approx((80 + 70 + 90) / 3)
    assert measures["AP"](run) == pytest.approx((50 + 65 + 90) / 3)
    assert measures["v_margin"](run) == pytest.approx((0.1 - 0.1 + 0.6) / 3)
    assert measures["earlier_share"](run) == pytest.approx((0.5 + 0.4) / 2)
    assert measures["drift"](run) == pytest.approx(((0.5 - 0.9) + (0.4 - 0.7)) / 2)
    assert measures["margin"](_run(claims, [[1.0]], 0.0)) is None  # no routing record: no value


def test_a_claim_pairs_the_rows_by_seed_and_decides(claims):
    def row(ap_by_seed):
        return {seed: _run(claims, [[ap, None], [ap, ap]], 0.0) for seed, ap in ap_by_seed.items()}

    runs = {"amlora": row({1: 60.0, 2: 70.0, 3: 65.0, 4: 50.0}), "inclora": row({1: 55.0, 2: 66.0, 3: 62.0})}
    claim = next(c for c in claims.CLAIMS if c.key == "amlora-ap")
    result = claims.evaluate(claim, runs)
    assert result["seeds"] == [1, 2, 3]  # seed 4 has no inclora run: left out of the pairs
    assert result["interval"]["mean"] == pytest.approx(4.0) and result["verdict"] == REPRODUCED  # [1.52, 6.48]
    assert claims.evaluate(claim, {"amlora": runs["amlora"]})["verdict"] == "not run"


def test_a_forgetting_claim_needs_rows_that_learned_their_tasks(claims):
    """Nothing learned, nothing forgotten: with a row's diagonal within 10 points of chance a forgetting claim is
    inconclusive whatever its interval says; the same runs count once chance is far below."""
    def row(f_ra_by_seed, diagonal):
        return {seed: _run(claims, [[diagonal, None], [diagonal - f_ra, diagonal]], f_ra)
                for seed, f_ra in f_ra_by_seed.items()}

    claim = next(c for c in claims.CLAIMS if c.key == "amlora-forgetting")
    runs = {"amlora": row({1: 1.0, 2: 2.0, 3: 1.5}, 30.0), "inclora": row({1: 10.0, 2: 12.0, 3: 11.0}, 30.0)}
    assert claims.evaluate(claim, runs)["verdict"] == REPRODUCED  # chance unknown: no check
    assert claims.evaluate(claim, runs, chance=10.0)["verdict"] == REPRODUCED  # 30 >= 10 + 10
    assert claims.evaluate(claim, runs, chance=25.0)["verdict"] == claims.NOT_LEARNED
    ap_claim = next(c for c in claims.CLAIMS if c.key == "amlora-ap")
    assert claims.evaluate(ap_claim, runs, chance=25.0)["verdict"] != claims.NOT_LEARNED  # AP claims: no check


def test_every_claim_names_known_rows_and_measures(claims):
    for claim in claims.CLAIMS:
        assert claim.paper in claims.PAPERS and claim.measure in claims.MEASURES
        assert set(claim.rows) <= set(claims.ROWS) and claim.direction in ("greater", "less")
        assert claim.source and claim.says
    assert claims.claim_rows(claims.CLAIMS) == list(claims.ROWS)  # every row serves a claim


# ---- end to end on a tiny model ---------------------------------------------------------------------------------
def test_claims_end_to_end_on_a_tiny_model(claims, tmp_path, monkeypatch, capsys):
    """Two seeds of SAPT's rows on two demo tasks: runs land in <row>/seed<k>/ with the paper preset under the
    scale's values, the report has every SAPT claim with a verdict and the routing table, a second invocation
    reuses the finished runs, and --dry-run lists them."""
    tiny = claims.Scale(
        description="tiny", model="tiny-random-llama",
        settings=dict(benchmark="demo", tasks=["sentiment", "number_sign"], max_train_per_task=4,
                      max_test_per_task=2, max_input_length=48, max_target_length=4, batch_size=4, grad_accum=1,
                      epochs=1, eval_batch_size=4, lr=5e-3),
        seeds=(1, 2), generator_steps=1, attention_samples=2, output="unused.md", deviations=("a tiny model",),
        step_s=0.1, eval_s=0.01)
    monkeypatch.setitem(claims.SCALES, "tiny", tiny)
    args = ["--scale", "tiny", "--papers", "sapt", "--runs-dir", str(tmp_path / "runs"),
            "--output", str(tmp_path / "CLAIMS.md")]
    assert claims.main(args) == 0
    root = tmp_path / "runs" / "tiny"
    for row in ("seqlora", "sapt-lora", "sapt-lora-noarm"):
        assert sorted(p.name for p in (root / row).iterdir()) == ["seed1", "seed2"]
    config = json.loads((root / "sapt-lora" / "seed2" / "results.json").read_text())
    assert config["seed"] == 2 and config["preset"]["name"] == "paper"
    import yaml

    recorded = yaml.safe_load((root / "sapt-lora-noarm" / "seed1" / "config.yaml").read_text())
    assert recorded["lr"] == 5e-3 and recorded["batch_size"] == 4  # the scale's values win over the preset's
    assert recorded["lora"]["r"] == 4 and recorded["method_options"]["sapt-lora"]["arm"] == "none"  # preset: r 4
    text = (tmp_path / "CLAIMS.md").read_text()
    sapt_claims = [c.key for c in claims.CLAIMS if c.paper == "sapt"]
    verdicts = text.split("\n## Verdicts\n")[1].splitlines()
    for key in sapt_claims:
        line = next(line for line in verdicts if line.startswith(f"| {key} |"))
        assert line.rstrip().endswith("** |") and "| 2 |" in line  # a verdict from 2 seeds
    assert "Tasks in order, with the score of guessing a label uniformly (chance): sentiment 50.0" in text
    assert "**sapt-lora** (all)" in text and "| number_sign |" in text  # the routing table
    saved = json.loads((tmp_path / "CLAIMS.json").read_text())
    assert [c["key"] for c in saved["claims"]] == sapt_claims and all(c["verdict"] for c in saved["claims"])
    capsys.readouterr()
    assert claims.main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(": finished") == 6 and "0 of 6 runs to do" in out


def test_the_readme_results_section_leads_with_the_claims_summary():
    """README's results section starts with the claims check; once bench/CLAIMS.md (bench/CLAIMS-short.md) exists,
    the table under "**Claims check**" ("**Reduced claims check**") is its summary table verbatim (regenerate both
    together)."""
    section = (ROOT / "README.md").read_text().split("## Small-scale reproduction and speed")[1].split("\n## ")[0]
    lead = section.split("bench/reproduce.py --preset small")[0]
    assert "python bench/claims.py" in lead and "**Claims check**" in lead
    for name, heading in (("CLAIMS-short.md", "**Reduced claims check**"), ("CLAIMS.md", "**Claims check**")):
        committed = ROOT / "bench" / name
        if not committed.exists():
            assert f"{heading}: not run yet" in lead
            continue
        summary = first_table(committed.read_text().split("\n## Summary\n")[1].splitlines())
        assert summary and first_table(lead.split(heading)[1].splitlines()) == summary, name


def test_every_scale_builds_its_rows_with_the_paper_preset_below_its_values(claims, tmp_path):
    """Each scale's rows (one of each kind) resolve with --preset paper (the scale's protocol values win, full
    fine-tuning gets its own lr), and the reduced scale is the cheap one the README offers."""
    from continual_lm.train.assemble import apply_preset

    for scale, row in [(s, r) for s in claims.SCALES.values() for r in ("seqft+migu", "amlora", "sapt-lora-noarm")]:
        config, _ = apply_preset(claims.row_config(scale, row, 1, tmp_path, None))  # ~1 s each
        assert config.lr == (claims.FULL_FT_LR if row.startswith("seqft") else scale.settings["lr"]), row
        assert (config.batch_size, config.grad_accum) == (scale.settings["batch_size"], 1)
        assert config.max_train_per_task == scale.settings["max_train_per_task"]
    rows = claims.claim_rows([c for c in claims.CLAIMS if c.paper in ("amlora", "sapt")])
    short, full = claims.SCALES["cpu-short"], claims.SCALES["cpu"]
    cost = {name: sum(claims.estimated_cost_s(scale, row, len(claims.task_names(scale))) for row in rows)
            * len(scale.seeds) for name, scale in (("short", short), ("full", full))}
    assert cost["short"] / 3600 / 2 < 1.25 < cost["full"] / 3600 / 2  # wall hours with --jobs 2
