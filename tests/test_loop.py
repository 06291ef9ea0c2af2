"""The loop end to end on a tiny model: a valid results.json, atomic run dirs, resume equality, integrity."""
import json

import pytest

from continual_lm.errors import ContinualLMError
from continual_lm.eval.cl_metrics import cl_metrics
from continual_lm.train import loop
from continual_lm import run

from helpers import Crash, CrashAt, tiny_config

CONTRACT_KEYS = {"benchmark", "order", "method", "model", "seed", "tasks", "metric_per_task", "matrix",
                 "single_task", "metrics", "timing", "versions"}


def check_contract(results, T):
    assert CONTRACT_KEYS <= set(results)
    assert len(results["tasks"]) == T and set(results["metric_per_task"]) == set(results["tasks"])
    assert set(results["metric_per_task"].values()) <= {"accuracy", "rougeL"}
    m = results["matrix"]
    assert len(m) == T and all(len(row) == T for row in m)
    for i in range(T):
        for j in range(T):
            if j <= i:
                assert 0 <= m[i][j] <= 100
            else:
                assert m[i][j] is None
    assert set(results["metrics"]) == {"AP", "F.Ra", "FWT", "BWT"}
    assert results["metrics"] == cl_metrics(m)
    assert set(results["timing"]) == {"train_s", "eval_s"}


def test_tiny_run_writes_a_valid_run_directory(tmp_path):
    results = run(tiny_config(tmp_path))
    out = tmp_path / "run"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    check_contract(on_disk, len(on_disk["tasks"]))
    assert on_disk["benchmark"] == "demo" and on_disk["method"] == "inclora" and on_disk["seed"] == 3
    for name in ("config.yaml", "report.md", "accuracy_matrix.png", "state.json"):
        assert (out / name).stat().st_size > 0
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("phase_*"))
    assert ckpts == [f"phase_{i:02d}" for i in range(len(on_disk["tasks"]))]
    assert not list(out.rglob("*.tmp*"))
    assert "AP" in (out / "report.md").read_text()


def test_existing_output_dir_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("x")
    with pytest.raises(ContinualLMError, match="--resume.*--overwrite"):
        run(tiny_config(tmp_path))


@pytest.mark.parametrize("crash_at", ["after_checkpoint", "during_eval"])
def test_resume_after_a_crash_gives_the_same_results(tmp_path, monkeypatch, crash_at):
    reference = run(tiny_config(tmp_path / "a", method="seqlora"))

    original_save = loop.RunDir.save_checkpoint

    def crashing_save(self, row, *args):
        path = original_save(self, row, *args)
        if row == 1 and crash_at == "after_checkpoint":
            raise Crash()
        return path

    monkeypatch.setattr(loop.RunDir, "save_checkpoint", crashing_save)
    config = tiny_config(tmp_path / "b", method="seqlora")
    with pytest.raises(Crash):  # during_eval: phase 2 evaluated, before state.json records it
        run(config, callbacks=[CrashAt("on_phase_evaluated", 2)] if crash_at == "during_eval" else [])
    monkeypatch.undo()
    resumed = run(tiny_config(tmp_path / "b", method="seqlora"), output_dir=tmp_path / "b" / "run", resume=True)
    assert resumed["matrix"] == reference["matrix"]
    assert resumed["metrics"] == reference["metrics"]


def test_corrupted_checkpoint_is_detected_and_named(tmp_path):
    config = tiny_config(tmp_path, method="inclora")
    run(config)
    out = tmp_path / "run"
    state = json.loads((out / "state.json").read_text())
    state["phases"]["3"]["row"] = None  # pretend the last evaluation did not happen: resume must load phase 3
    (out / "state.json").write_text(json.dumps(state))
    manifest = json.loads((out / "checkpoints" / "phase_03" / "manifest.json").read_text())
    newest, = [name for name, blob in manifest["blobs"].items() if any(k.endswith(".3") for k in blob["tensors"])]
    weights = out / "checkpoints" / "blobs" / f"{newest}.safetensors"  # where phase 3's own LoRA is stored
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ContinualLMError, match=f"blobs/{newest}.safetensors.*corrupted"):
        run(config, output_dir=out, resume=True)


def test_seq2seq_model_runs_end_to_end(tmp_path):
    results = run(tiny_config(tmp_path, method="inclora", model="tiny-random-t5"))
    check_contract(results, len(results["tasks"]))


def test_eval_all_tasks_fills_the_upper_triangle(tmp_path):
    results = run(tiny_config(tmp_path, method="seqlora", eval_all_tasks=True))
    assert all(v is not None for row in results["matrix"] for v in row)
    assert results["metrics"] == cl_metrics(results["matrix"])
