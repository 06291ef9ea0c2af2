"""Property-style kill and resume: every registered method (plugins on top of seqlora), in every checkpoint mode,
killed at points drawn from its own run's timeline, resumes to the uninterrupted run: the same accuracy matrix and
bit-identical final weights. The kills are in-process (an exception at the N-th optimizer step, file rename or
generate call); tests/test_kill_resume.py kills real processes with SIGKILL.

A file rename (`os.replace`) is how every durable write ends (atomic writes, checkpoint blocks and folders), so the
timeline covers kills just before and just after each write, during training and during evaluation."""
import json
import os
import random

import pytest
import torch

from continual_lm.train.checkpoint import RunDir
from continual_lm import run

from helpers import method_specs, smallest_config

MODES = ("all", "last")
KILLS_PER_MODE = 2


class Kill(Exception):
    """Stands for the process being killed."""


class Timeline:
    """Counts optimizer steps, file renames and generate calls; raises Kill at the armed one (a rename is killed
    before or after it happened, alternately)."""

    def __init__(self, monkeypatch):
        from transformers.generation.utils import GenerationMixin

        self.count, self.armed = 0, None
        step, replace, generate = torch.optim.AdamW.step, os.replace, GenerationMixin.generate

        def tick(after_rename=None):
            self.count += 1
            if self.count == self.armed:
                self.armed = None
                if after_rename is not None and self.count % 2:
                    after_rename()
                raise Kill()

        def counted_step(opt, *args, **kwargs):
            tick()
            return step(opt, *args, **kwargs)

        def counted_replace(src, dst, *args, **kwargs):
            tick(lambda: replace(src, dst, *args, **kwargs))
            return replace(src, dst, *args, **kwargs)

        def counted_generate(model, *args, **kwargs):
            tick()
            return generate(model, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", counted_step)
        monkeypatch.setattr(os, "replace", counted_replace)
        monkeypatch.setattr(GenerationMixin, "generate", counted_generate)

    def arm(self, at: int | None) -> None:
        self.count, self.armed = 0, at


def _fast(monkeypatch) -> None:
    """What a kill test does not need: the report's figures and accelerate's gc.collect after each phase (both slow
    in a long test process, neither part of the state a resume restores)."""
    import gc

    from continual_lm.eval import report

    monkeypatch.setattr(report, "write_run_report", lambda run_dir, results: None)
    monkeypatch.setattr(gc, "collect", lambda *args: 0)


def _config(where, spec, mode):
    return smallest_config(where, spec, keep_checkpoints=mode)


def _final_checkpoint(out, phases=2) -> tuple[dict, dict, dict]:
    """The last phase's trainable tensors, method tensors and method metadata."""
    return RunDir(out).load_checkpoint(phases - 1)


def _check_whole(out) -> None:
    """Every file under a final name is whole: JSON parses, every phase checkpoint verifies."""
    for path in out.rglob("*.json"):
        if ".tmp" not in str(path.relative_to(out)):
            json.loads(path.read_text())
    for folder in (out / "checkpoints").glob("phase_*"):
        RunDir(out).load_checkpoint(int(folder.name.split("_")[1]))


@pytest.mark.parametrize("spec", method_specs())
def test_killed_anywhere_in_any_checkpoint_mode_the_run_resumes_to_the_same_end(spec, tmp_path, monkeypatch):
    _fast(monkeypatch)
    timeline = Timeline(monkeypatch)
    reference = run(_config(tmp_path / "reference", spec, "all"))
    events = timeline.count
    weights, state, meta = _final_checkpoint(tmp_path / "reference" / "run")
    predictions = (tmp_path / "reference" / "run" / "predictions" / "after_phase_01.json").read_text()
    draw = random.Random(spec)
    for mode in MODES:
        out = tmp_path / mode / "run"
        kills = sorted(draw.sample(range(1, events + 1), KILLS_PER_MODE))
        kills = [kills[0]] + [max(1, k - kills[0]) for k in kills[1:]]  # later kills count from the resumed start
        results = None
        for at in kills + [None]:
            timeline.arm(at)
            try:
                results = run(_config(tmp_path / mode, spec, mode), output_dir=out,
                              resume=(out / "config.yaml").exists())
                break
            except Kill:
                _check_whole(out)
        assert results["matrix"] == reference["matrix"], (mode, kills)
        final, final_state, final_meta = _final_checkpoint(out)
        assert final.keys() == weights.keys() and final_state.keys() == state.keys() and final_meta == meta
        assert all(torch.equal(final[n], weights[n]) for n in weights), (mode, kills)
        assert all(torch.equal(final_state[n], state[n]) for n in state), (mode, kills)
        assert (out / "predictions" / "after_phase_01.json").read_text() == predictions, (mode, kills)
        if mode == "last":
            assert [p.name for p in (out / "checkpoints").glob("phase_*")] == ["phase_01"]
        assert not list(out.rglob("*.tmp*"))
