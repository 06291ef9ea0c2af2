"""Unseen tasks are evaluated zero-shot (and on the base model) but never trained; trackers write event files."""
import pytest

from continual_lm.data import collate
from continual_lm.errors import ContinualLMError
from continual_lm import run

from helpers import tiny_config


def test_unseen_tasks_are_never_trained_on(tmp_path, monkeypatch):
    trained_on = []
    original = collate.Collator.encode_train

    def spy(self, task, example, task_index):
        trained_on.append(task.name)
        return original(self, task, example, task_index)

    monkeypatch.setattr(collate.Collator, "encode_train", spy)
    config = tiny_config(tmp_path, method="inclora", tasks=["sentiment", "animal_class", "reverse"],
                         unseen_tasks=["arithmetic", "demo:number_sign"])
    results = run(config)
    assert results["tasks"] == ["sentiment", "animal_class", "reverse"]
    assert trained_on and set(trained_on) == {"sentiment", "animal_class", "reverse"}
    unseen = results["unseen"]
    assert unseen["tasks"] == ["arithmetic", "number_sign"]
    assert set(unseen["final"]) == set(unseen["base_model"]) == {"arithmetic", "number_sign"}
    assert all(0 <= v <= 100 for v in [*unseen["final"].values(), *unseen["base_model"].values()])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Unseen tasks" in report and "zero-shot base model" in report


def test_an_unseen_task_inside_the_stream_is_an_error(tmp_path):
    with pytest.raises(ContinualLMError, match="part of the training stream"):
        run(tiny_config(tmp_path, unseen_tasks=["sentiment"]))


def test_tensorboard_tracker_logs_loss_scores_and_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = run(tiny_config(tmp_path, method="seqlora", report_to="tensorboard"))
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "cl/AP"} <= tags
    assert {f"eval/{t}" for t in results["tasks"]} <= tags
    assert acc.Scalars("cl/AP")[-1].value == pytest.approx(results["metrics"]["AP"], abs=1e-3)


def wandb_records(folder):
    """The records of an offline W&B run's transaction log (RUN/run-ID.wandb: a LevelDB-style log of protobuf
    records; header of 7 bytes, then chunks of 32 KiB blocks, each with crc32, length and type)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    path, = folder.rglob("run-*.wandb")
    data, position, block, records, pending = path.read_bytes(), 7, 32768, [], b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        if kind == 0 and length == 0:
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_history_holds_every_evaluation_the_metrics_and_the_full_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the W&B tracker needs pip install 'continual-lm[wandb]' (CI installs it)")
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tasks = ["sentiment", "animal_class", "reverse"]
    results = run(tiny_config(tmp_path, method="amlora", tasks=tasks, report_to="wandb", tracker_project="cl-tests",
                              tracker_run_name="amlora-tiny"))
    records = wandb_records(tmp_path / "run" / "tracking")
    def key(item):
        return item.key or "/".join(item.nested_key)

    history = [{key(item): json.loads(item.value_json) for item in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    steps = [row["_step"] for row in history]
    assert steps == sorted(steps)  # monotonic: W&B drops a step lower than one it has
    for i, row in enumerate(results["matrix"]):  # every evaluated cell, at the end of its phase's training
        logged = next(h for h in history if h.get("eval/phase") == i)
        assert {t: logged[f"eval/{t}"] for t, v in zip(tasks, row) if v is not None} == \
            {t: v for t, v in zip(tasks, row) if v is not None}
    last = history[-1]
    assert last["cl/AP"] == pytest.approx(results["metrics"]["AP"]) and "cl/BWT" in last
    assert sum("train/loss" in h for h in history) == steps[-1]  # one loss per optimizer step
    run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_record.project == "cl-tests" and run_record.display_name == "amlora-tiny"
    config = {key(item): json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    flat = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    assert flat["lora.r"] == 8 and flat["lr"] == 5e-3 and "method_options.amlora.l1" in flat
