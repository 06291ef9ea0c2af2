"""Core methods on a tiny model: what must stay frozen stays bit-identical, what trains moves."""
from pathlib import Path

import pytest
import torch

from continual_lm.methods.registry import split_method_spec
from continual_lm.errors import ContinualLMError
from continual_lm.models.backbone import load_backbone
from continual_lm.models.inject import find_lora_banks
from continual_lm import run

from helpers import PhaseRecorder, tiny_config


def _run_with(tmp_path, method, **kw):
    backbone = load_backbone("tiny-random-llama", seed=3)
    base = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    recorder = PhaseRecorder()  # every parameter after each phase's training
    results = run(tiny_config(tmp_path, method, **kw), backbone=backbone, callbacks=[recorder])
    return backbone, base, recorder.records, results


def test_inclora_freezes_earlier_loras_and_the_base(tmp_path):
    backbone, base, snaps, results = _run_with(tmp_path, "inclora")
    T = len(results["tasks"])
    assert T >= 4 and len(snaps) == T
    banks = find_lora_banks(backbone.model)
    assert banks and all(b.num_loras == T for b in banks.values())
    for name, value in base.items():  # base weights never move (renamed under .base by the bank)
        key = name.replace("q_proj.weight", "q_proj.base.weight").replace("v_proj.weight", "v_proj.base.weight")
        assert torch.equal(snaps[-1][key], value), key
    for t in range(T - 1):
        lora_keys = [k for k in snaps[t] if f"lora_A.{t}" in k or f"lora_B.{t}" in k]
        assert lora_keys
        b_keys = [k for k in lora_keys if "lora_B" in k]
        assert all(snaps[t][k].abs().sum() > 0 for k in b_keys)  # B starts at zero: task t trained its LoRA
        for later in range(t + 1, T):
            for k in lora_keys:
                assert torch.equal(snaps[later][k], snaps[t][k]), f"{k} moved during task {later}"


def test_seqlora_trains_one_lora_through_the_stream(tmp_path):
    backbone, base, snaps, results = _run_with(tmp_path, "seqlora")
    banks = find_lora_banks(backbone.model)
    assert all(b.num_loras == 1 for b in banks.values())
    b_keys = [k for k in snaps[0] if "lora_B.0" in k]
    assert all(not torch.equal(snaps[1][k], snaps[0][k]) for k in b_keys)  # the one LoRA keeps training


def test_seqft_updates_the_backbone(tmp_path):
    backbone, base, snaps, _ = _run_with(tmp_path, "seqft", lr=1e-4)
    assert not find_lora_banks(backbone.model)
    moved = [n for n in base if not torch.equal(snaps[0][n], base[n])]
    assert len(moved) > len(base) // 2


def test_mtl_fills_only_the_last_row_and_single_the_diagonal(tmp_path):
    _, _, _, mtl = _run_with(tmp_path / "mtl", "mtl")
    T = len(mtl["tasks"])
    assert all(v is None for row in mtl["matrix"][:-1] for v in row)
    assert all(v is not None for v in mtl["matrix"][-1])
    assert mtl["metrics"]["BWT"] is None and mtl["metrics"]["AP"] is not None

    _, _, _, single = _run_with(tmp_path / "single", "single")
    m = single["matrix"]
    assert all((m[i][j] is not None) == (i == j) for i in range(T) for j in range(T))
    assert single["single_task"] == {t: m[j][j] for j, t in enumerate(single["tasks"])}
    assert single["metrics"]["AP"] == pytest.approx(sum(m[j][j] for j in range(T)) / T, abs=1e-3)

    # FWT of another run against that reference: mean_j (a[j][j] - s_j)
    _, _, _, inc = _run_with(tmp_path / "inc", "inclora", single_task_from=str(tmp_path / "single" / "run"))
    a, s = inc["matrix"], single["single_task"]
    expected = sum(a[j][j] - s[t] for j, t in enumerate(inc["tasks"])) / T
    assert inc["metrics"]["FWT"] == pytest.approx(expected, abs=1e-3)


def test_single_resets_to_the_initial_state_before_each_task(tmp_path, monkeypatch):
    from continual_lm.methods.reference import Single

    at_start = []
    monkeypatch.setattr(Single, "before_task", lambda self, model, i, task: at_start.append(
        {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}))
    _, _, snaps, _ = _run_with(tmp_path, "single")
    assert len(at_start) == len(snaps) >= 4
    for state in at_start[1:]:  # every task starts from the same initial LoRA, not from the previous task's
        assert all(torch.equal(state[k], at_start[0][k]) for k in state)
    keys = [k for k in snaps[0] if "lora_B.0" in k]
    assert all(not torch.equal(snaps[0][k], at_start[0][k]) for k in keys)  # ... and training did move it


def test_method_spec_errors():
    with pytest.raises(ContinualLMError, match="Did you mean .inclora"):
        split_method_spec("inclra")
    with pytest.raises(ContinualLMError, match="base method"):
        split_method_spec("seqlora+inclora")
    with pytest.raises(ContinualLMError, match="expected NAME"):
        split_method_spec("seqlora+")


def test_optimizer_groups_default_to_one_group_and_a_composition_asks_its_base(monkeypatch):
    from continual_lm.methods.base import build_method

    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    method = build_method(tiny_config(Path("/tmp"), method="seqlora"))
    assert method.optimizer_groups(params, 0.1) == [{"params": params, "lr": 0.1}]
    composite = build_method(tiny_config(Path("/tmp"), method="seqlora+ewc"))
    own = [{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}]
    monkeypatch.setattr(composite.base, "optimizer_groups", lambda p, lr: own if p is params and lr == 0.1 else None)
    assert composite.optimizer_groups(params, 0.1) is own
