"""EWC: Fisher computed in eval mode over the trainable parameters (LoRA or full), the penalty is zero at theta*
and its gradient pulls back toward theta*, online accumulation, and the state survives the checkpoint."""
import pytest
import torch

from continual_lm import run
from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import build_method
from continual_lm.methods.ewc import EWC
from continual_lm.methods.registry import split_method_spec

from helpers import PhaseRecorder, tiny_config

TASKS = ["sentiment", "animal_class"]


def run_ewc(tmp_path, monkeypatch, base, **options):
    """A 2-task run of BASE+ewc; returns (runner, training flags seen while the Fisher was computed, Fisher
    snapshots after each phase)."""
    modes, runners = [], []
    original_ll = EWC.target_log_likelihood

    def recording_ll(model, batch):
        modes.append(model.training)
        return original_ll(model, batch)

    def take(run):
        runners.append(run)
        return {n: f.clone() for n, f in ewc_part(run.method).fisher.items()}

    recorder = PhaseRecorder(take)
    monkeypatch.setattr(EWC, "target_log_likelihood", staticmethod(recording_ll))
    lr = 1e-4 if base == "seqft" else 5e-3
    run(tiny_config(tmp_path, f"{base}+ewc", tasks=TASKS, lr=lr, method_options={"ewc": options}),
        callbacks=[recorder])
    monkeypatch.undo()
    return runners[-1], modes, recorder.records


def ewc_part(method):
    return next(p for p in method.parts if p.name == "ewc")


def check_penalty_pulls_back(ewc, model):
    params = {n: p for n, p in model.named_parameters() if n in ewc.fisher}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(ewc.anchor[name])
    assert ewc.penalty(model).item() == 0.0  # zero at theta*

    torch.manual_seed(0)
    deltas = {n: torch.randn_like(p) * 0.01 for n, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.add_(deltas[name])
    model.zero_grad(set_to_none=True)
    penalty = ewc.penalty(model)
    expected = ewc.options.lam / 2 * sum((ewc.fisher[n] * deltas[n] ** 2).sum() for n in params)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-4) and penalty.item() > 0
    penalty.backward()
    step = 1 / (ewc.options.lam * max(f.max() for f in ewc.fisher.values()))  # no overshoot: factor 1 - F/max F
    distance_before = distance_after = 0.0
    for name, p in params.items():  # d/dtheta = lam * F * (theta - theta*): a descent step moves toward theta*
        torch.testing.assert_close(p.grad, ewc.options.lam * ewc.fisher[name] * (p.detach() - ewc.anchor[name]))
        pulled = p.grad != 0
        assert torch.equal(torch.sign(p.grad[pulled]), torch.sign(deltas[name][pulled]))
        before = (p.detach() - ewc.anchor[name]).abs()
        after = (p.detach() - step * p.grad - ewc.anchor[name]).abs()
        assert torch.all(after <= before)
        distance_before += before.sum().item()
        distance_after += after.sum().item()
    assert distance_after < distance_before


def test_ewc_on_lora(tmp_path, monkeypatch):
    runner, modes, snapshots = run_ewc(tmp_path, monkeypatch, "seqlora", fisher_samples=3, gamma=0.5, lam=10.0)
    ewc, model = ewc_part(runner.method), runner.model
    assert modes == [False] * 6  # 3 samples per task, every one computed in eval mode
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora) and set(ewc.fisher) == lora == set(ewc.anchor)
    assert all(torch.all(f >= 0) for f in ewc.fisher.values())
    assert sum(f.sum() for f in ewc.fisher.values()) > 0

    # online accumulation: F after task 2 = gamma * F after task 1 + F_2 (recomputed here at the same weights)
    ewc.options.gamma = 0.0
    ewc.after_task(model, 1, runner.tasks[1], [])
    for name, fisher_2 in ewc.fisher.items():
        torch.testing.assert_close(snapshots[1][name], 0.5 * snapshots[0][name] + fisher_2)
    ewc.fisher = snapshots[1]

    # the checkpoint holds Fisher and theta*: a fresh method loading it has the same penalty
    _, tensors, meta = runner.run_dir.load_checkpoint(1)
    fresh = build_method(runner.config)
    fresh.load_extra_state(tensors, meta)
    assert set(ewc_part(fresh).fisher) == lora
    assert ewc_part(fresh).penalty(model).item() == pytest.approx(ewc.penalty(model).item(), rel=1e-6)

    check_penalty_pulls_back(ewc, model)


def test_ewc_on_full_finetuning(tmp_path, monkeypatch):
    runner, modes, _ = run_ewc(tmp_path, monkeypatch, "seqft", fisher_samples=2)
    ewc, model = ewc_part(runner.method), runner.model
    assert modes == [False] * 4
    assert set(ewc.fisher) == {n for n, _ in model.named_parameters()}  # every backbone weight
    check_penalty_pulls_back(ewc, model)


def test_ewc_is_a_plugin_with_checked_options(tmp_path):
    assert split_method_spec("seqlora+ewc") == ["seqlora", "ewc"]
    assert split_method_spec("seqft+replay+ewc") == ["seqft", "replay", "ewc"]
    with pytest.raises(ContinualLMError, match="plugin; put a base method first, e.g. 'seqlora\\+ewc'"):
        split_method_spec("ewc")
    with pytest.raises(ContinualLMError, match="inclora cannot be combined with ewc"):
        split_method_spec("inclora+ewc")
    with pytest.raises(ContinualLMError, match="--ewc-fisher-samples: expected an integer >= 1"):
        build_method(tiny_config(tmp_path, "seqlora+ewc", method_options={"ewc": {"fisher_samples": 0}}))
    with pytest.raises(ContinualLMError, match="--ewc-lam: expected a number >= 0"):
        build_method(tiny_config(tmp_path, "seqlora+ewc", method_options={"ewc": {"lam": -1.0}}))
