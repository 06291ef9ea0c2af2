"""The declared protocol (what a method uses beyond the current task's data), the kind of PET block a method trains
and the single-task reference of that kind, checked before anything trains; task names in prompts."""
import json

import pytest
import torch
import yaml

from continual_lm.callbacks import Callback
from continual_lm.cli import main
from continual_lm.config import RunConfig
from continual_lm.errors import ContinualLMError
from continual_lm.eval.report import comparison_markdown
from continual_lm.methods.base import build_method, protocol
from continual_lm.methods.registry import METHODS
from continual_lm.train import loop
from continual_lm import run

from helpers import PhaseRecorder, tiny_config

TASKS = ["sentiment", "reverse"]
# (task id in training, task id at test, replay, pseudo samples); sapt-* are declared by their own module
EXPECTED = {
    "seqft": (0, 0, 0, 0), "seqlora": (0, 0, 0, 0), "inclora": (1, 0, 0, 0), "olora": (1, 0, 0, 0),
    "moelora": (1, 0, 0, 0), "amlora": (1, 0, 0, 0), "mtl": (0, 0, 1, 0), "single": (1, 1, 0, 0),
    "l2p": (0, 0, 0, 0), "progprompt": (1, 0, 0, 0), "lfpt5": (1, 0, 0, 1), "epi": (1, 0, 0, 0),
    "seqlora+replay": (1, 0, 1, 0), "seqlora+ewc": (1, 0, 0, 0), "seqlora+migu": (0, 0, 0, 0),
    "inflora": (1, 0, 0, 0), "gainlora": (1, 0, 0, 0), "nlora": (1, 0, 0, 0),
}
KINDS = {"seqft": "full", "seqlora": "lora", "inclora": "lora", "olora": "lora", "moelora": "lora",
         "amlora": "lora", "l2p": "prompt", "progprompt": "prompt", "lfpt5": "prompt", "epi": "prompt",
         "sapt-lora": "lora", "sapt-prompt": "prompt", "seqft+ewc": "full", "osf": "full", "merge-ta": "lora", "inflora": "lora",
         "gainlora": "lora", "nlora": "lora",
         "merge-ties": "lora", "merge-dare": "lora", "magmax": "full"}


@pytest.mark.parametrize("spec", EXPECTED)
def test_every_method_declares_its_protocol(spec):
    flags = protocol(build_method(RunConfig(method=spec)))
    assert tuple(int(flags[k]) for k in ("task_id_at_train", "task_id_at_test", "replay", "pseudo_samples")) \
        == EXPECTED[spec]


def test_every_method_declares_the_kind_of_block_it_trains():
    assert set(KINDS) | {"mtl", "single", "replay", "ewc", "migu"} >= set(METHODS)
    for spec, kind in KINDS.items():
        assert build_method(RunConfig(method=spec)).pet_kind == kind, spec
    for kind in ("lora", "prompt", "full"):
        for method in ("single", "mtl"):
            assert build_method(RunConfig(method=method, method_options={method: {"pet": kind}})).pet_kind == kind


def _single_run(tmp_path, pet, callbacks=(), **overrides):
    config = tiny_config(tmp_path, method="single", tasks=TASKS, max_train_per_task=4, max_test_per_task=2,
                         method_options={"single": {"pet": pet, "prompt_length": 3}}, **overrides)
    return run(config, callbacks=callbacks)


def test_single_trains_a_fresh_soft_prompt_per_task_with_the_backbone_frozen(tmp_path):
    recorder = PhaseRecorder(take=lambda run: (
        {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad},
        {n: p.detach().clone() for n, p in run.model.named_parameters() if not p.requires_grad}))
    results = _single_run(tmp_path, "prompt", callbacks=[recorder])
    assert results["pet_kind"] == "prompt" and results["protocol"]["task_id_at_test"]
    (trained_0, frozen_0), (trained_1, frozen_1) = recorder.records
    assert list(trained_0) == ["reference_prompt.prompts.0"] and trained_0["reference_prompt.prompts.0"].shape[0] == 3
    assert all(torch.equal(frozen_0[n], frozen_1[n]) for n in frozen_0)  # the backbone never moves
    assert not torch.equal(trained_0["reference_prompt.prompts.0"], trained_1["reference_prompt.prompts.0"])
    assert results["single_task"] == {t: results["matrix"][j][j] for j, t in enumerate(TASKS)}
    assert results["final_scores"] == results["single_task"]  # the schedule's diagonal
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["lr"] == 5e-3  # tiny_config's lr


class PromptAtTrainingStart(Callback):
    def __init__(self):
        self.starts = []

    def on_train_begin(self, run, phase, steps):
        self.starts.append(dict(run.model.named_parameters())["reference_prompt.prompts.0"].detach().clone())


def test_single_prompt_resets_to_the_same_initial_prompt_for_every_task(tmp_path):
    spy = PromptAtTrainingStart()
    _single_run(tmp_path, "prompt", callbacks=[spy])
    assert torch.equal(spy.starts[0], spy.starts[1])


def _fake_single_run(folder, tasks, kind="lora", method="single", record_kind=True):
    folder.mkdir(parents=True)
    results = {"method": method, "single_task": {t: 50.0 for t in tasks}}
    if record_kind:
        results["pet_kind"] = kind
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "config.yaml").write_text(yaml.safe_dump({"method_options": {"single": {"pet": kind}}}))
    return folder


def _never_trains(monkeypatch):
    def fail(self, phase):
        raise AssertionError("training started before the inputs were checked")

    monkeypatch.setattr(loop.ContinualRunner, "train_phase", fail)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory"),
    ("unfinished", "no results.json there"),
    ("not_single", "a run of method 'seqlora'"),
    ("missing_task", "no single-task score for reverse"),
    ("wrong_kind", "trained lora blocks, but method l2p trains prompt blocks.*--single-pet prompt"),
    ("wrong_kind_old_run", "trained lora blocks, but method l2p trains prompt blocks"),
])
def test_single_task_from_is_checked_before_training(tmp_path, monkeypatch, case, message):
    reference = tmp_path / "single"
    if case == "unfinished":
        reference.mkdir()
        (reference / "config.yaml").write_text("method: single\n")
    elif case != "missing":
        _fake_single_run(reference, TASKS[:1] if case == "missing_task" else TASKS,
                         method="seqlora" if case == "not_single" else "single",
                         record_kind=case != "wrong_kind_old_run")
    _never_trains(monkeypatch)
    config = tiny_config(tmp_path, method="l2p" if case.startswith("wrong") else "inclora", tasks=TASKS,
                         single_task_from=str(reference))
    with pytest.raises(ContinualLMError, match=message):
        run(config)
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before the run directory was written


def test_a_reference_of_the_same_kind_gives_fwt(tmp_path):
    reference = _single_run(tmp_path / "ref", "prompt")
    results = run(tiny_config(tmp_path, method="progprompt", tasks=TASKS, max_train_per_task=4, max_test_per_task=2,
                              single_task_from=str(tmp_path / "ref" / "run")))
    assert results["single_task"] == reference["single_task"] and results["metrics"]["FWT"] is not None


def test_task_names_in_prompts_are_refused_for_methods_without_a_task_id(tmp_path, monkeypatch):
    _never_trains(monkeypatch)
    with pytest.raises(ContinualLMError, match="--prompt-task-name.*inclora.*--allow-task-name-leak"):
        run(tiny_config(tmp_path, prompt_task_name=True, tasks=TASKS))
    monkeypatch.undo()
    leak = run(tiny_config(tmp_path / "leak", prompt_task_name=True, allow_task_name_leak=True, tasks=TASKS,
                           max_train_per_task=4, max_test_per_task=2))
    assert leak["protocol"]["task_names_in_prompts"] is True
    assert "| inclora | Ttr N |" in comparison_markdown([leak])
    single = _single_run(tmp_path / "single", "lora", prompt_task_name=True)  # uses the task id anyway: allowed
    assert single["protocol"] == {"task_id_at_train": True, "task_id_at_test": True, "replay": False,
                                  "pseudo_samples": False, "task_names_in_prompts": True}


def test_reports_and_list_show_the_protocol(tmp_path, capsys):
    results = run(tiny_config(tmp_path, method="seqlora+replay", tasks=TASKS, max_train_per_task=4,
                              max_test_per_task=2))
    assert results["protocol"]["replay"] and results["pet_kind"] == "lora"
    table = comparison_markdown([results, {**results, "method": "old", "protocol": None}])
    assert "| seqlora+replay | R Ttr |" in table and "| old | ? |" in table
    assert "R = replays stored real examples" in table
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "protocol: R Ttr; trains: -; presets: paper" in out  # the replay plugin
    assert "protocol: P Ttr; trains: prompt; presets: paper" in out  # lfpt5
    assert "trains: lora|prompt|full (--single-pet)" in out
    differs = [line for line in out.splitlines() if "differs from paper:" in line]  # point 10
    assert any("300 tokens and 2 %" in line for line in differs)  # lfpt5
    assert any("--l2p-query hidden" in line for line in differs)  # l2p
    assert any("deep prefixes" in line for line in differs)  # epi
    assert "paper      amlora," in out
