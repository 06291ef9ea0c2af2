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
