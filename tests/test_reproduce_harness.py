"""bench/reproduce.py on a tiny preset: runs land in one folder per method, finished runs are skipped, a named
variant runs its method with its options, and RESULTS.md lists every finished run of every invocation."""
import json

import pytest
import yaml

from helpers import ROOT, first_table, load_script


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
    saved_options = yaml.safe_load((runs / "olora-strong" / "config.yaml").read_text())["method_options"]
    assert saved_options == {"olora": {"lambda1": 2.0, "lambda2": 0.0}}  # every option recorded, defaults included
    assert variant["method"] == "olora" and variant["metrics"]["FWT"] is not None  # FWT from the single run
    text = (tmp_path / "RESULTS.md").read_text()
    demo, invocations = text.split("\n## demo")[1].split("\n## Invocations")
    rows = [line.split(" | ")[0].lstrip("| ") for line in demo.splitlines()
            if line.startswith("| ") and not line.startswith("| method") and not line.startswith("| ---")]
    assert rows == ["single", "seqlora", "olora-strong"]
    # one record per invocation that ran something, quoted in RESULTS.md
    records = json.loads((tmp_path / "runs" / "tiny" / "invocations.json").read_text())
    assert [r["runs"] for r in records] == [["demo/single", "demo/seqlora"], ["demo/olora-strong"]]
    assert [r["finished"] for r in records] == [r["runs"] for r in records] and all(r["wall_s"] > 0 for r in records)
    assert len([line for line in invocations.splitlines() if line.startswith("| 20")]) == 2
    (tmp_path / "RESULTS.md").unlink()
    assert reproduce.main(args + ["--table-only"]) == 0
    assert "| olora-strong |" in (tmp_path / "RESULTS.md").read_text()


def test_an_interrupted_invocation_keeps_its_record(reproduce, tmp_path, monkeypatch):
    """The invocation record is written at the start and after each run: a harness killed after its first run
    leaves that run, the wall time so far and the runs it had left in invocations.json and RESULTS.md."""
    real_run_one = reproduce.run_one

    def run_one(benchmark, method, *rest, **kwargs):
        if method == "seqlora":
            raise KeyboardInterrupt  # stands for the process being killed
        return real_run_one(benchmark, method, *rest, **kwargs)

    monkeypatch.setattr(reproduce, "run_one", run_one)
    args = ["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "RESULTS.md")]
    with pytest.raises(KeyboardInterrupt):
        reproduce.main(args + ["--methods", "single", "seqlora"])
    record, = json.loads((tmp_path / "runs" / "tiny" / "invocations.json").read_text())
    assert record["runs"] == ["demo/single", "demo/seqlora"] and record["finished"] == ["demo/single"]
    assert record["wall_s"] > 0
    assert "| 1 of 2 (interrupted) |" in (tmp_path / "RESULTS.md").read_text()


def test_the_readme_quotes_the_committed_results_tables():
    """Under a bold heading named like each benchmark section of bench/RESULTS.md ("**standard order 1**"), the
    README shows exactly that section's table (regenerate both together)."""
    readme = (ROOT / "README.md").read_text().splitlines()
    sections = (ROOT / "bench" / "RESULTS.md").read_text().split("\n## ")[1:]
    benchmarks = [part for part in sections if not part.startswith("Invocations")]
    assert len(benchmarks) == 2, "bench/RESULTS.md should have the standard and superni tables"
    for part in benchmarks:
        heading, *lines = part.splitlines()
        where = [k for k, line in enumerate(readme) if line.strip() == f"**{heading}**"]
        assert len(where) == 1, f"README.md needs one '**{heading}**' heading above the table"
        assert first_table(readme[where[0] + 1:]) == first_table(lines), \
            f"README.md's {heading!r} table differs from bench/RESULTS.md's"


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


def test_a_presets_method_options_apply_below_a_variants_own(reproduce, tmp_path):
    preset = reproduce.PRESETS["small"]
    settings = preset["benchmarks"]["standard"]

    def options(method):
        return reproduce.run_config("standard", method, settings, preset, tmp_path, None).method_options

    assert options("sapt-lora") == {"sapt-lora": {"generator_epochs": 10}}  # SAPT's generator budget, capped
    assert options("sapt-lora-noarm") == {"sapt-lora": {"generator_epochs": 10, "arm": "none"}}
    assert options("seqlora+migu") == {} and options("gainlora-olora") == {"gainlora": {"base": "olora"}}


def test_each_row_gets_the_fwt_reference_of_its_kind_of_block(reproduce, tmp_path):
    """seqft (full fine-tuning) is measured against `single-full`, a prompt method against `single-prompt`, a LoRA
    row against `single`; a reference runs before the rows that need it, also when it is listed last."""
    assert {m: reproduce.reference_of(m, {}) for m in ("seqft", "osf", "l2p", "sapt-lora-noarm", "seqlora+migu",
                                                        "single-full")} == {
        "seqft": "single-full", "osf": "single-full", "l2p": "single-prompt", "sapt-lora-noarm": "single",
        "seqlora+migu": "single", "single-full": None}
    assert reproduce.default_methods()[:3] == ["single", "single-full", "single-prompt"]
    order = []

    def run(benchmark, method, *rest, **kwargs):
        order.append(method)
        return reproduce.run_one(benchmark, method, *rest, **kwargs)

    args = ["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "RESULTS.md"),
            "--methods", "seqft", "single-full"]
    original = reproduce.run_all
    reproduce.run_all = lambda *a, **k: original(*a, **{**k, "run": run})
    try:
        assert reproduce.main(args) == 0
    finally:
        reproduce.run_all = original
    assert order == ["single-full", "seqft"]
    runs = tmp_path / "runs" / "tiny" / "demo"
    seqft = json.loads((runs / "seqft" / "results.json").read_text())
    assert seqft["metrics"]["FWT"] is not None and seqft["method"] == "seqft"
    config = yaml.safe_load((runs / "seqft" / "config.yaml").read_text())
    assert config["single_task_from"] == str(runs / "single-full")
    assert json.loads((runs / "single-full" / "results.json").read_text())["pet_kind"] == "full"
