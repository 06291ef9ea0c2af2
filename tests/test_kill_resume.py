"""SIGKILL a real `python -m continual_lm run` at deterministic points, resume it, and get the uninterrupted results.

The kill comes from a `sitecustomize.py` that only the test puts on the subprocess' PYTHONPATH (library code has no
test hooks): it wraps one function and kills its own process at the N-th call. Kill points:

* ``train``:     before the 3rd optimiser step (phase 1 is half trained)
* ``evaluate``:  at the 2nd `generate` call (phase 1 trained and checkpointed, its evaluation under way)
* ``checkpoint``: inside the 2nd checkpoint block write (phase 1's new tensors half written under their temporary
                 name, no manifest yet)
* ``rename``:    right after phase 1's checkpoint folder got its final name, before state.json says so
* ``evaluate-last``: as ``evaluate``, with ``--keep-checkpoints last`` (which once pruned the checkpoint a resume
                 needed)

The method, inclora+replay, has method state (the replay memory, saved as extra state) that changes what later phases
train on, so a wrongly restored state shows in the results.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from continual_lm.config import RunConfig
from continual_lm.errors import ContinualLMError
from continual_lm.train.checkpoint import RunDir
from continual_lm import run

from helpers import tiny_config

SETTINGS = dict(method="inclora+replay", tasks=["sentiment", "animal_class", "number_sign"], max_train_per_task=8,
                max_test_per_task=4, method_options={"replay": {"fraction": 0.25}})

SITECUSTOMIZE = '''
import os, signal
target, _, n = os.environ["CLM_TEST_KILL_AT"].partition(":")
calls = {"n": 0}

def due():
    calls["n"] += 1
    return calls["n"] == int(n)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if target == "train":
    import torch
    original_step = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        if due():
            die()
        return original_step(self, *args, **kwargs)
    torch.optim.AdamW.step = step
elif target == "evaluate":
    from transformers.generation.utils import GenerationMixin
    original_generate = GenerationMixin.generate
    def generate(self, *args, **kwargs):
        if due():
            die()
        return original_generate(self, *args, **kwargs)
    GenerationMixin.generate = generate
elif target == "checkpoint":
    original_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".safetensors") and due():  # a block write cut in the middle, before its rename
            with open(src, "r+b") as handle:
                handle.truncate(os.path.getsize(src) // 2)
            die()
        original_replace(src, dst, *args, **kwargs)
    os.replace = replace
elif target == "rename":
    original_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        original_replace(src, dst, *args, **kwargs)
        if str(dst).endswith(os.sep + "phase_01") and due():
            die()
    os.replace = replace
'''
KILL_POINTS = {"train": "train:3", "evaluate": "evaluate:2", "checkpoint": "checkpoint:2", "rename": "rename:1",
               "evaluate-last": "evaluate:2"}


def _cli_args(config: RunConfig, out: Path, point: str) -> list[str]:
    return ["run", "--benchmark", "demo", "--method", config.method, "--model", config.model, "--seed",
            str(config.seed), "--tasks", *config.tasks, "--max-train-per-task", str(config.max_train_per_task),
            "--max-test-per-task", str(config.max_test_per_task), "--batch-size", str(config.batch_size),
            "--eval-batch-size", str(config.eval_batch_size), "--max-input-length", str(config.max_input_length),
            "--max-target-length", str(config.max_target_length), "--lr", str(config.lr),
            "--replay-fraction", "0.25", "--no-progress", "--output-dir", str(out),
            *(["--keep-checkpoints", "last"] if point.endswith("-last") else [])]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Start every killed run at once (they are independent), then the uninterrupted reference in this process."""
    tmp = tmp_path_factory.mktemp("kill")
    (tmp / "hook").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    config = tiny_config(tmp / "reference", **SETTINGS)
    processes = {}
    for point, spec in KILL_POINTS.items():
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp / "hook"), os.environ.get("PYTHONPATH", "")]),
               "CLM_TEST_KILL_AT": spec, "OMP_NUM_THREADS": "1"}
        argv = [sys.executable, "-m", "continual_lm", *_cli_args(config, tmp / point, point)]
        processes[point] = subprocess.Popen(argv,
                                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True)
    reference = run(config)
    for point, process in processes.items():
        log, _ = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, f"{point}: expected to be killed, got rc {process.returncode}\n{log[-3000:]}"
    return tmp, reference


def _assert_nothing_half_written_under_a_final_name(out: Path) -> None:
    """Every file with its final name is whole: JSON/YAML parse, every checkpoint folder verifies against its
    manifest. Temporary names (.*.tmp*, .phase_XX.tmp-PID) may hold partial data; resume removes them."""
    run_dir = RunDir(out)
    yaml.safe_load((out / "config.yaml").read_text())
    for path in out.rglob("*.json"):
        if ".tmp" not in str(path.relative_to(out)):
            json.loads(path.read_text())
    for folder in (out / "checkpoints").glob("phase_*"):
        run_dir.load_checkpoint(int(folder.name.split("_")[1]))


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_anywhere_resumes_to_the_same_results(killed_runs, point):
    tmp, reference = killed_runs
    out = tmp / point
    assert not (out / "results.json").exists()
    _assert_nothing_half_written_under_a_final_name(out)
    state = json.loads((out / "state.json").read_text())["phases"]
    assert state["0"]["row"] is not None and "2" not in state  # killed in phase 1
    if point == "checkpoint":  # the cut write stayed under its temporary name
        assert not (out / "checkpoints" / "phase_01").exists()
        assert list((out / "checkpoints" / "blobs").glob(".*.tmp"))
    if point == "rename":  # the checkpoint is complete but the state does not know it yet: phase 1 is redone
        assert (out / "checkpoints" / "phase_01" / "manifest.json").exists() and "1" not in state
    if point.startswith("evaluate"):
        assert state["1"]["trained"] and state["1"]["row"] is None

    resumed = run(RunConfig.from_yaml(out / "config.yaml"), output_dir=out, resume=True)
    assert resumed["matrix"] == reference["matrix"]
    assert resumed["metrics"] == reference["metrics"]
    assert not list(out.rglob("*.tmp*"))
    replay = json.loads((out / "checkpoints" / "phase_02" / "method_state.json").read_text())["replay"]["memory"]
    expected = json.loads((tmp / "reference" / "run" / "checkpoints" / "phase_02" / "method_state.json").read_text())
    assert replay == expected["replay"]["memory"]
    final = RunDir(out).load_checkpoint(2)[0]
    for name, value in RunDir(tmp / "reference" / "run").load_checkpoint(2)[0].items():
        assert torch.allclose(final[name], value, rtol=0, atol=1e-6), name  # same weights, not only same scores
    if point.endswith("-last"):
        assert [p.name for p in (out / "checkpoints").glob("phase_*")] == ["phase_02"]


def test_a_truncated_checkpoint_is_detected_and_named(killed_runs, tmp_path):
    import shutil

    source = killed_runs[0] / "reference" / "run"
    out = tmp_path / "run"
    shutil.copytree(source, out)
    state = json.loads((out / "state.json").read_text())
    state["phases"]["2"]["row"] = None  # the last evaluation did not happen: resume must load phase 2's checkpoint
    (out / "state.json").write_text(json.dumps(state))
    manifest = json.loads((out / "checkpoints" / "phase_02" / "manifest.json").read_text())
    newest, = [name for name, blob in manifest["blobs"].items() if any(k.endswith(".2") for k in blob["tensors"])]
    weights = out / "checkpoints" / "blobs" / f"{newest}.safetensors"  # phase 2's own LoRA
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - 100)
    with pytest.raises(ContinualLMError, match=rf"{weights.name} is truncated or corrupted"):
        run(RunConfig.from_yaml(out / "config.yaml"), output_dir=out, resume=True)


def test_a_run_directory_in_use_by_another_process_is_refused(tmp_path):
    """Two processes writing one run (a resume started twice) would prune each other's checkpoints: the second one is
    refused with the directory and the owner's pid named, and the lock goes with the process that held it."""
    from continual_lm.train.assemble import prepare_run

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path, **SETTINGS).to_dict()))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from continual_lm.train.checkpoint import RunDir; "
                               "run = RunDir(sys.argv[1]); run.acquire_lock(); print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = tiny_config(tmp_path, **SETTINGS)
        for resume, overwrite in ((True, False), (False, True)):
            with pytest.raises(ContinualLMError, match="in use by another process"):
                prepare_run(config, output_dir=out, resume=resume, overwrite=overwrite)
        with pytest.raises(ContinualLMError, match=rf"{out.name} is in use by another process \(pid {holder.pid}\)"):
            RunDir(out).acquire_lock()
        assert (out / "config.yaml").exists()  # --overwrite did not remove the other process' run
    finally:
        holder.kill()
        holder.wait()
    assert prepare_run(tiny_config(tmp_path, **SETTINGS), output_dir=out, resume=True).path == out
    first = RunDir(out)
    first.acquire_lock()
    first.release_lock()
    RunDir(out).acquire_lock()  # released: the next writer gets it
