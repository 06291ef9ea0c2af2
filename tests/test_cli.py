"""The command line: list, errors with suggestions, and the issue's must-show runs on the real benchmark data."""
import json

import pytest

from continual_lm.cli import main
from continual_lm.eval.cl_metrics import cl_metrics


def test_list_shows_benchmarks_methods_models(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("standard", "long", "superni", "demo", "custom", "seqlora", "inclora", "mtl", "single", "seqft",
                 "smollm2-135m", "tiny-random-llama", "tiny-random-t5"):
        assert word in out


@pytest.mark.parametrize("argv, message", [
    (["run", "--method", "inclra"], "unknown method 'inclra'.*Did you mean 'inclora'"),
    (["run", "--benchmark", "standrd"], "unknown benchmark.*standard"),
    (["run", "--benchmark", "standard", "--order", "9", "--data-dir", "."], "order"),
    (["run", "--lora-r", "0"], "--lora-r must be a positive integer"),
    (["run", "--scheduler", "wobbly"], "scheduler"),
    (["run", "--benchmark", "standard", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    (["run", "--model", "tiny-random-lama", "--output-dir", "OUT"], "tiny-random-llama"),
])
def test_bad_input_gives_a_clear_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONTINUAL_LM_DATA", raising=False)
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "continual-lm: error:" in err
    import re

    assert re.search(message, err, re.S), err


def _check_results(path, T):
    results = json.loads(path.read_text())
    assert len(results["tasks"]) == T and len(results["matrix"]) == T
    assert all(len(r) == T for r in results["matrix"])
    assert results["metrics"] == cl_metrics(results["matrix"])
    return results


def test_must_show_standard_order1_inclora_tiny_llama(shared_data, tmp_path, capsys):
    out = tmp_path / "OUT"
    argv = ["run", "--benchmark", "standard", "--order", "1", "--method", "inclora", "--model", "tiny-random-llama",
            "--data-dir", str(shared_data), "--max-train-per-task", "16", "--max-test-per-task", "8",
            "--output-dir", str(out), "--max-input-length", "128", "--no-progress"]
    assert main(argv) == 0
    results = _check_results(out / "results.json", 4)
    assert results["tasks"] == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert set(results["metric_per_task"].values()) == {"accuracy"}
    assert "| inclora" in capsys.readouterr().out


def test_must_show_superni_order1_tiny_t5(shared_data, tmp_path):
    out = tmp_path / "OUT"
    argv = ["run", "--benchmark", "superni", "--order", "1", "--method", "inclora", "--model", "tiny-random-t5",
            "--data-dir", str(shared_data), "--max-train-per-task", "4", "--max-test-per-task", "4",
            "--output-dir", str(out), "--max-input-length", "96", "--max-target-length", "8", "--no-progress"]
    assert main(argv) == 0
    results = _check_results(out / "results.json", 15)
    assert results["tasks"][0] == "task1572_samsum_summary"
    assert results["metric_per_task"]["task363_sst2_polarity_classification"] == "accuracy"
    assert results["metric_per_task"]["task1572_samsum_summary"] == "rougeL"


def test_report_compares_runs_and_draws_a_chart(tmp_path, capsys):
    from continual_lm import run
    from helpers import tiny_config

    run(tiny_config(tmp_path / "a", method="seqlora"))
    run(tiny_config(tmp_path / "b", method="inclora"))
    capsys.readouterr()  # what the runs printed
    assert main(["report", str(tmp_path), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "seqlora" in out and "inclora" in out and "AP" in out
    assert (tmp_path / "out" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out" / "comparison.md").read_text().strip() == out.split("\n\ncomparison written")[0].strip()


def test_accelerate_config_lists_writes_and_never_replaces(tmp_path, capsys, monkeypatch):
    import yaml

    from continual_lm.accelerate_configs import config_path

    monkeypatch.chdir(tmp_path)
    assert main(["accelerate-config"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("ddp_cpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp"))
    assert main(["accelerate-config", "fsdp"]) == 0
    written = tmp_path / "fsdp.yaml"
    assert written.read_text() == config_path("fsdp").read_text()
    assert yaml.safe_load(written.read_text())["fsdp_config"]["fsdp_version"] == 2
    written.write_text("mine: true\n")
    assert main(["accelerate-config", "fsdp"]) == 2  # the user's file is left alone
    assert "exists" in capsys.readouterr().err and written.read_text() == "mine: true\n"
    assert main(["accelerate-config", "ddp", "--output", str(tmp_path / "x.yaml")]) == 2
    assert "Did you mean 'ddp_cpu'" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()
    assert main(["accelerate-config", "ddp_cpu", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str(config_path("ddp_cpu"))
