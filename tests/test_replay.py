"""Replay: the memory holds real samples of earlier tasks with the configured size, the loop consumes it, and it
survives a crash + resume (the resumed run ends with the same weights as the uninterrupted one)."""
import pytest
import torch

from continual_lm import run
from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import TrainExample, build_method
from continual_lm.methods.registry import split_method_spec
from continual_lm.methods.replay import ReplayOptions
from continual_lm.train import loop

from helpers import RunCapture, tiny_config

TASKS = ["sentiment", "animal_class", "reverse"]


class Crash(Exception):
    pass


def run_capturing(config, **kw):
    """Run, returning (results, runner) with the runner as it was at the end of the run."""
    capture = RunCapture()
    results = run(config, callbacks=[capture], **kw)
    return results, capture.run


def replay_part(method):
    return next(p for p in method.parts if p.name == "replay")


def test_memory_size_options_and_errors(tmp_path):
    assert ReplayOptions().memory_size(8) == 1  # 2% of 8, at least one
    assert ReplayOptions().memory_size(1000) == 20
    assert ReplayOptions(fraction=0.5).memory_size(7) == 4
    assert ReplayOptions(count=3).memory_size(1000) == 3
    assert ReplayOptions(count=50).memory_size(8) == 8  # never more than the task has
    with pytest.raises(ContinualLMError, match="--replay-fraction: expected a number in \\(0, 1\\]"):
        build_method(tiny_config(tmp_path, "seqlora+replay", method_options={"replay": {"fraction": 0.0}}))
    with pytest.raises(ContinualLMError, match="--replay-count: expected an integer >= 1 or None"):
        build_method(tiny_config(tmp_path, "seqlora+replay", method_options={"replay": {"count": 0}}))
    for spec in ("seqft+replay", "inclora+replay", "olora+replay", "moelora+replay"):
        assert split_method_spec(spec)[-1] == "replay"
    with pytest.raises(ContinualLMError, match="plugin"):
        split_method_spec("replay")


def test_memory_holds_earlier_real_samples_and_the_loop_consumes_it(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "seqlora+replay", tasks=TASKS, method_options={"replay": {"count": 3}})
    results, runner = run_capturing(config)
    replay = replay_part(runner.method)
    assert sorted(replay.memory) == [0, 1, 2]
    for t, stored in replay.memory.items():
        assert len(stored) == 3 and len(set(stored)) == 3
        assert all(example in runner.tasks[t].train for example in stored)  # real samples of that task
    assert runner.consumed_task_indices == [{0}, {0, 1}, {0, 1, 2}]
    mixed = replay.train_examples(1, [])
    assert {e.task_index for e in mixed} == {0} and len(mixed) == 3  # phase 1 sees only task 0's memory
    own = [TrainExample(2, ex) for ex in runner.tasks[2].train]
    assert len(replay.train_examples(2, own)) == len(own) + 6


def test_memory_survives_a_crash_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    options = {"replay": {"fraction": 0.25}}  # 2 of 8 samples per task
    reference, ref_runner = run_capturing(
        tiny_config(tmp_path / "a", "seqlora+replay", tasks=TASKS, method_options=options))

    original_save = loop.RunDir.save_checkpoint

    def crashing_save(self, row, *args):
        path = original_save(self, row, *args)
        if row == 1:
            raise Crash()
        return path

    monkeypatch.setattr(loop.RunDir, "save_checkpoint", crashing_save)
    config = tiny_config(tmp_path / "b", "seqlora+replay", tasks=TASKS, method_options=options)
    with pytest.raises(Crash):
        run(config)
    monkeypatch.setattr(loop.RunDir, "save_checkpoint", original_save)
    resumed, runner = run_capturing(config, output_dir=tmp_path / "b" / "run", resume=True)

    # the crash came before phase 1 was marked trained: phases 1 and 2 train again, phase 1 with task 0's memory
    # restored from the phase 0 checkpoint
    assert runner.consumed_task_indices == [{0, 1}, {0, 1, 2}]
    assert replay_part(runner.method).memory == replay_part(ref_runner.method).memory
    assert all(len(v) == 2 for v in replay_part(runner.method).memory.values())
    assert resumed["matrix"] == reference["matrix"]
    final, expected = runner.trainable_state(), ref_runner.trainable_state()
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name
