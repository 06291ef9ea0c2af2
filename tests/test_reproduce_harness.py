"""bench/reproduce.py on a tiny preset: runs land in one folder per method, finished runs are skipped, a named
variant runs its method with its options, and RESULTS.md lists every finished run of every invocation."""
import json

import pytest
import yaml

from helpers import ROOT, load_script


@pytest.fixture()
def reproduce(monkeypatch):
    module = load_script("bench/reproduce.py")
    tiny = dict(tasks=["sentiment", "number_sign"], max_train_per_task=4, max_test_per_task=2, max_input_length=48,
                max_target_length=4, epochs=1, batch_size=4, eval_batch_size=4, progress=False)
    monkeypatch.setitem(module.PRESETS, "tiny", {"model": "tiny-random-llama", "seed": 3, "benchmarks": {"demo": tiny}})
    monkeypatch.setitem(module.VARIANTS, "olora-strong", ("olora", {"olora": {"lambda1": 2.0}}))
    return module


def test_two_invocations_build_one_table_and_skip_finished_runs(reproduce, tmp_path, capsys):
    args = ["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "RESULTS.md")]
    assert reproduce.main(args + ["--methods", "single", "seqlora"]) == 0
    assert reproduce.main(args + ["--methods", "seqlora", "olora-strong"]) == 0
    assert "demo/seqlora: finished earlier" in capsys.readouterr().out
    runs = tmp_path / "runs" / "tiny" / "demo"
    assert sorted(p.name for p in runs.iterdir()) == ["olora-strong", "seqlora", "single"]
    variant = json.loads((runs / "olora-strong" / "results.json").read_text())
    assert yaml.safe_load((runs / "olora-strong" / "config.yaml").read_text())["method_options"] == {"olora": {"lambda1": 2.0}}
    assert variant["method"] == "olora" and variant["metrics"]["FWT"] is not None  # FWT from the single run
    text = (tmp_path / "RESULTS.md").read_text()
    demo, invocations = text.split("\n## demo")[1].split("\n## Invocations")
    rows = [line.split(" | ")[0].lstrip("| ") for line in demo.splitlines()
            if line.startswith("| ") and not line.startswith("| method") and not line.startswith("| ---")]
    assert rows == ["single", "seqlora", "olora-strong"]
    # one record per invocation that ran something, quoted in RESULTS.md
    records = json.loads((tmp_path / "runs" / "tiny" / "invocations.json").read_text())
    assert [r["runs"] for r in records] == [["demo/single", "demo/seqlora"], ["demo/olora-strong"]]
    assert len([line for line in invocations.splitlines() if line.startswith("| 20")]) == 2
    (tmp_path / "RESULTS.md").unlink()
    assert reproduce.main(args + ["--table-only"]) == 0
    assert "| olora-strong |" in (tmp_path / "RESULTS.md").read_text()


def test_the_readme_quotes_the_committed_results_tables():
    """The README's reproduction tables are copies of bench/RESULTS.md's (regenerate both together)."""
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    tables = [part for part in results.split("\n## ")[1:]]
    assert tables, "bench/RESULTS.md has no benchmark table"
    for part in tables:
        rows = [line for line in part.splitlines() if line.startswith("| ")]
        assert rows and "\n".join(rows) in readme, f"README.md does not quote bench/RESULTS.md's table {part.splitlines()[0]!r}"


def test_jobs_run_in_parallel_processes_after_the_single_reference(monkeypatch, tmp_path):
    """--jobs 2: each run in its own worker process (importable by the workers: bench/ on sys.path) with its own
    log; every non-single run starts after `single` finished (its FWT is set) and ends as a one-at-a-time run."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    module = importlib.import_module("reproduce")
    tiny = dict(tasks=["sentiment", "number_sign"], max_train_per_task=4, max_test_per_task=2, max_input_length=48,
                max_target_length=4, epochs=1, batch_size=4, eval_batch_size=4)
    monkeypatch.setitem(module.PRESETS, "tiny", {"model": "tiny-random-llama", "seed": 3, "benchmarks": {"demo": tiny}})
    methods = ["--methods", "single", "seqlora", "inclora"]
    parallel, sequential = tmp_path / "parallel", tmp_path / "sequential"
    assert module.main(["--preset", "tiny", "--runs-dir", str(parallel), "--output", str(tmp_path / "p.md"),
                        "--jobs", "2", "--threads", "1"] + methods) == 0
    assert module.main(["--preset", "tiny", "--runs-dir", str(sequential), "--output", str(tmp_path / "s.md")]
                       + methods) == 0
    runs = parallel / "tiny" / "demo"
    for method in ("single", "seqlora", "inclora"):
        log = (runs / f"{method}.log").read_text()
        assert "Traceback" not in log
        results = json.loads((runs / method / "results.json").read_text())
        reference = json.loads((sequential / "tiny" / "demo" / method / "results.json").read_text())
        assert results["device"] == "cpu (1 threads)"
        assert results["matrix"] == reference["matrix"]
        if method != "single":
            assert results["metrics"]["FWT"] is not None
    record, = json.loads((parallel / "tiny" / "invocations.json").read_text())
    assert (record["jobs"], record["threads"], len(record["runs"])) == (2, 1, 3)
