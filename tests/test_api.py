"""The public Python API: continual_lm.run with options, a stream built in Python (records, JSON/JSONL files, a
datasets object), methods registered from user code, user callbacks, the example script; and a finished run that
predicts, exports and merges after it was moved away from its data."""
import json
import logging
import shutil

import pytest

import continual_lm
from continual_lm import Callback, Stream, run, task_from_dataset, task_from_file, task_from_records
from continual_lm.errors import ContinualLMError
from continual_lm.methods import registry
from continual_lm.methods.base import Method, register_method
from continual_lm.methods.seqlora import SeqLoRA

from helpers import load_script, tiny_config

RECORDS = [{"text": f"item {i}", "label": "yes" if i % 2 else "no"} for i in range(10)]


@pytest.fixture
def own_registry(monkeypatch):
    """Methods registered by a test stay in a copy of the registry."""
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))


def test_the_example_script_runs_a_python_stream_a_registered_method_and_a_callback(tmp_path, own_registry):
    example = load_script("examples/python_api.py")
    out = example.main(["--model", "tiny-random-llama", "--output-dir", str(tmp_path / "run"), "--epochs", "1"])
    results = out["results"]
    assert results["method"] == "seqlora-anchor" and results["benchmark"] == "custom"
    assert results["tasks"] == ["parity", "larger"] and results["metric_per_task"]["larger"] == "accuracy"
    assert len(out["watch"]) == 2 and out["watch"][0] == "after task 1: nothing forgotten"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["final_scores"] == results["final_scores"]
    assert json.loads((tmp_path / "run" / "stream.json").read_text())["tasks"][0]["labels"] == ["even", "odd"]
    assert "seqlora-anchor" in registry.METHODS


def test_run_takes_options_as_keywords_and_checks_them(tmp_path):
    stream = Stream([task_from_records("t", RECORDS, input_field="text", output_field="label", labels="auto")])
    with pytest.raises(ContinualLMError, match="replaces the benchmark; drop benchmark='standard'"):
        run(benchmark="standard", stream=stream, output_dir=tmp_path / "a")
    with pytest.raises(ContinualLMError, match="--tasks selects tasks"):
        run(tasks=["t"], stream=stream, output_dir=tmp_path / "b")
    with pytest.raises(ContinualLMError, match="unknown option 'epoch'"):
        run(epoch=2, output_dir=tmp_path / "c")
    with pytest.raises(ContinualLMError, match="is not a continual_lm.Callback"):
        run(tiny_config(tmp_path), callbacks=[object()])
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c", "run"))


def test_tasks_from_records_files_and_datasets_objects(tmp_path):
    datasets = pytest.importorskip("datasets")
    from_records = task_from_records("t", RECORDS, input_field="text", output_field="label", labels="auto")
    assert len(from_records.train) == 8 and len(from_records.test) == 2 and from_records.labels == ["no", "yes"]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS[:8]))
    (tmp_path / "test.json").write_text(json.dumps(RECORDS[8:]))
    from_files = task_from_file("t", tmp_path / "train.jsonl", tmp_path / "test.json", input_field="text",
                                output_field="label", labels=["no", "yes"], instruction="Odd?")
    assert [e.input for e in from_files.test] == ["item 8", "item 9"] and from_files.instruction == "Odd?"
    local = datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:8]),
                                  "validation": datasets.Dataset.from_list(RECORDS[8:])})
    from_dataset = task_from_dataset("t", local, test_split="validation", input_field="text", output_field="label")
    assert [(e.input, e.target) for e in from_dataset.test] == [("item 8", "no"), ("item 9", "yes")]
    assert from_dataset.metric == "rougeL" and from_dataset.source == "datasets"
    with pytest.raises(ContinualLMError, match="task 't': .*record 0 has no field 'input'"):
        task_from_records("t", RECORDS)
    with pytest.raises(ContinualLMError, match="has no split 'training'"):
        task_from_dataset("t", local, train_split="training")
    with pytest.raises(ContinualLMError, match="given more than once"):
        Stream([from_records, from_files])


def test_methods_register_from_user_code_and_entry_points(own_registry, monkeypatch):
    class Mine(SeqLoRA):
        name = "mine"

    assert register_method(Mine) is Mine and registry.method_class("mine") is Mine
    with pytest.raises(ContinualLMError, match="'mine' is already registered"):
        register_method(type("Other", (SeqLoRA,), {"name": "mine"}))
    with pytest.raises(ContinualLMError, match="not a subclass of continual_lm.Method"):
        register_method(dict)
    with pytest.raises(ContinualLMError, match="needs a name"):
        register_method(type("Nameless", (Method,), {"name": ""}))

    from importlib.metadata import EntryPoint

    point = EntryPoint(name="published", value="continual_lm.methods.inclora:IncLoRA", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [point] if group == point.group else [])
    assert registry.method_class("published").__name__ == "IncLoRA"


def test_a_moved_run_predicts_exports_and_merges_without_its_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name, rows in (("train", RECORDS[:8]), ("test", RECORDS[8:])):
        (data / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (data / "stream.yaml").write_text("tasks:\n  - {name: odd, train: train.jsonl, test: test.jsonl, "
                                      "input_field: text, output_field: label, labels: auto}\n"
                                      "  - {name: echo, file: train.jsonl, input_field: text, output_field: text}\n")
    config = tiny_config(tmp_path / "first", benchmark="custom", stream_file=str(data / "stream.yaml"), lr=2e-2)
    run(config)
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(tmp_path / "first" / "run"), moved)
    shutil.rmtree(data)  # the data is gone; the run keeps its stream's definition (stream.json)
    expected = json.loads((moved / "predictions" / "after_phase_01.json").read_text())
    loaded = continual_lm.load_run(moved)
    assert [t.name for t in loaded.tasks] == ["odd", "echo"] and loaded.tasks[0].labels == ["no", "yes"]
    inputs = [{"input": e["input"], "task": task} for task in ("odd", "echo") for e in expected[task]]
    assert loaded.predict(inputs) == [e["prediction"] for task in ("odd", "echo") for e in expected[task]]
    assert continual_lm.api.export_run(loaded, tmp_path / "exported")["combined"] == "combined"
    continual_lm.api.merge_run(loaded, tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").exists()
    (moved / "stream.json").write_text((moved / "stream.json").read_text().replace('"odd"', '"even"'))
    with pytest.raises(ContinualLMError, match="stream.json differs from the stream the run started with"):
        continual_lm.load_run(moved)


def test_a_callback_sees_every_event_in_order_and_a_run_logs_and_records_each_example(tmp_path):
    class Events(Callback):
        def __init__(self):
            self.seen = []

        def on_run_start(self, run):
            self.seen.append("start")

        def on_train_begin(self, run, phase, steps):
            self.seen.append(f"train {phase.row} ({steps} steps)")

        def on_train_end(self, run, phase):
            self.seen.append(f"trained {phase.row}")

        def on_phase_evaluated(self, run, phase, evaluation):
            self.seen.append(f"evaluated {phase.row}: {[t.name for t in evaluation.tasks]}")

        def on_stream_end(self, run):
            self.seen.append("stream end")

        def on_run_end(self, run, results):
            self.seen.append(f"end AP {results['metrics']['AP']}")

    events = Events()
    # a handler on the logger itself: the CLI (run earlier in the same process by other tests) stops propagation
    records, handler, logger = [], logging.Handler(), logging.getLogger("continual_lm")
    handler.emit = records.append
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        results = run(tiny_config(tmp_path, tasks=["sentiment", "reverse"]), callbacks=[events])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert events.seen == ["start", "train 0 (2 steps)", "trained 0", "evaluated 0: ['sentiment']",
                           "train 1 (2 steps)", "trained 1", "evaluated 1: ['sentiment', 'reverse']", "stream end",
                           f"end AP {results['metrics']['AP']}"]

    # one logging line per phase (time, steps, loss, every score), and one for the run (without progress bars)
    lines = [r.getMessage() for r in records]
    phases = [line for line in lines if line.startswith("phase ")]
    assert len(phases) == 2 and all(" s (2 steps, loss " in line for line in phases)
    assert phases[1].endswith(f"sentiment {results['matrix'][1][0]:.2f}, reverse {results['matrix'][1][1]:.2f}")
    assert lines[-1].startswith(f"{results['method']}: AP {results['metrics']['AP']:.2f}")
    # each prediction file holds, per test example, its input, references, prediction and score
    from continual_lm.data.stream import load_stream_for

    stream = load_stream_for(tiny_config(tmp_path, tasks=["sentiment", "reverse"]))
    records = json.loads((tmp_path / "run" / "predictions" / "after_phase_01.json").read_text())
    for j, task in enumerate(stream.tasks):
        assert [(r["input"], r["references"]) for r in records[task.name]] == [(e.input, list(e.refs()))
                                                                             for e in task.test]
        assert all(set(r) == {"input", "references", "prediction", "score"} for r in records[task.name])
        mean = sum(r["score"] for r in records[task.name]) / len(records[task.name])
        assert mean == pytest.approx(results["matrix"][1][j], abs=1e-3)
