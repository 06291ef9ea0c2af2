"""Phase checkpoints (issue 18, points 1 and 12): each frozen block is stored once and later checkpoints refer to it,
loading stays exact and verified, pruning (--keep-checkpoints last) never removes what a resume or a kept checkpoint
needs, and run directories written in the first checkpoint format still load."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from continual_lm.errors import ContinualLMError
from continual_lm.io_utils import sha256_file
from continual_lm.train.checkpoint import RunDir
from continual_lm import run

from helpers import Crash, CrashAt, PhaseRecorder, skip_report_and_gc, tiny_config

FOUR = ["sentiment", "animal_class", "reverse", "number_sign"]


def _config(where, **overrides):
    return tiny_config(where, method="inclora", tasks=FOUR, max_train_per_task=2, max_test_per_task=1, batch_size=2,
                       max_input_length=32, max_target_length=3, **overrides)


@pytest.fixture(scope="module")
def inclora_run(tmp_path_factory):
    """A finished 4-task inclora run, and its trainable state after each phase (recorded in memory)."""
    tmp = tmp_path_factory.mktemp("inclora")
    with pytest.MonkeyPatch.context() as patch:
        skip_report_and_gc(patch)
        recorder = PhaseRecorder(take=lambda run: {n: p.detach().clone() for n, p in run.trainable_state().items()})
        results = run(_config(tmp), callbacks=[recorder])
    return tmp / "run", results, recorder.records


def _blobs_referenced(out) -> set:
    names = set()
    for manifest in (out / "checkpoints").glob("phase_*/manifest.json"):
        names |= set(json.loads(manifest.read_text())["blobs"])
    return names


def test_each_frozen_lora_is_stored_once_and_every_phase_loads_exactly(inclora_run):
    """inclora freezes each task's LoRA after its phase: four phases store four LoRAs, not 1 + 2 + 3 + 4."""
    out, _, records = inclora_run
    stored = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*.safetensors"))
    one_copy = sum(t.numel() * t.element_size() for t in records[-1].values())
    assert one_copy < stored < one_copy + 4 * 4096  # tensor bytes once, plus a small header per phase
    for row, expected in enumerate(records):
        trainable, _, _ = RunDir(out).load_checkpoint(row)
        assert trainable.keys() == expected.keys()
        assert all(torch.equal(trainable[n], expected[n]) for n in expected), row


def test_a_corrupted_shared_block_is_refused_by_every_checkpoint_that_uses_it(inclora_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(inclora_run[0], out)
    first = json.loads((out / "checkpoints" / "phase_00" / "manifest.json").read_text())
    blob, = first["blobs"]
    assert blob in json.loads((out / "checkpoints" / "phase_03" / "manifest.json").read_text())["blobs"]
    path = out / "checkpoints" / "blobs" / f"{blob}.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    for row in (0, 3):
        with pytest.raises(ContinualLMError, match=rf"{blob}\.safetensors.*corrupted"):
            RunDir(out).load_checkpoint(row)


@pytest.mark.parametrize("change", ["no blob listed", "method_state.json not listed", "blob without tensors",
                                    "not a dict"])
def test_a_manifest_must_account_for_every_file(inclora_run, tmp_path, change):
    shutil.copytree(inclora_run[0], tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "phase_00" / "manifest.json"
    manifest = json.loads(path.read_text())
    if change == "no blob listed":
        manifest["blobs"] = {}
    elif change == "method_state.json not listed":
        manifest["files"] = {}
    elif change == "blob without tensors":
        for blob in manifest["blobs"].values():
            blob["tensors"] = {}
    else:
        manifest = [manifest]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ContinualLMError, match="manifest.json"):
        RunDir(tmp_path / "run").load_checkpoint(0)


def _write_first_format(folder, trainable, method_tensors, meta, files=None) -> None:
    """A phase checkpoint as the first checkpoint format wrote it (every tensor in the phase's own files)."""
    folder.mkdir(parents=True)
    save_file(trainable, folder / "trainable.safetensors")
    save_file(method_tensors, folder / "method_state.safetensors")
    (folder / "method_state.json").write_text(json.dumps(meta))
    names = ("trainable.safetensors", "method_state.safetensors", "method_state.json") if files is None else files
    listed = {n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size} for n in names}
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "row": 0, "files": listed}))


def test_a_checkpoint_of_the_first_format_still_loads_and_is_verified(tmp_path):
    trainable = {"a.lora_A.0": torch.randn(2, 3), "a.lora_B.0": torch.randn(3, 2)}
    method_tensors = {"fisher": torch.rand(4)}
    _write_first_format(tmp_path / "run" / "checkpoints" / "phase_00", trainable, method_tensors, {"k": 1})
    loaded, tensors, meta = RunDir(tmp_path / "run").load_checkpoint(0)
    assert all(torch.equal(loaded[n], trainable[n]) for n in trainable) and loaded.keys() == trainable.keys()
    assert torch.equal(tensors["fisher"], method_tensors["fisher"]) and meta == {"k": 1}
    # a first-format manifest that lists no files cannot vouch for them
    _write_first_format(tmp_path / "bad" / "checkpoints" / "phase_00", trainable, method_tensors, {}, files=())
    with pytest.raises(ContinualLMError, match="manifest.json"):
        RunDir(tmp_path / "bad").load_checkpoint(0)


def test_last_mode_resumes_after_a_kill_during_evaluation_and_keeps_what_it_needs(inclora_run, tmp_path,
                                                                                  monkeypatch):
    """--keep-checkpoints last: killed while evaluating phase 1 (phase 1 trained and checkpointed), the resumed run
    must not need phase 0's checkpoint; it ends like the uninterrupted run, with only the last checkpoint and
    exactly the blobs it refers to."""
    _, reference, records = inclora_run
    skip_report_and_gc(monkeypatch)
    with pytest.raises(Crash):
        run(_config(tmp_path, keep_checkpoints="last"), callbacks=[CrashAt("on_train_end", 1)])
    out = tmp_path / "run"
    resumed = run(_config(tmp_path, keep_checkpoints="last"), output_dir=out, resume=True)
    assert resumed["matrix"] == reference["matrix"] and resumed["metrics"] == reference["metrics"]
    assert sorted(p.name for p in (out / "checkpoints").glob("phase_*")) == ["phase_03"]
    assert {p.stem for p in (out / "checkpoints" / "blobs").glob("*.safetensors")} == _blobs_referenced(out)
    trainable, _, _ = RunDir(out).load_checkpoint(3)
    assert all(torch.equal(trainable[n], records[-1][n]) for n in records[-1])
