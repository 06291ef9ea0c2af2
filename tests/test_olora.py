"""O-LoRA: the orthogonality loss, the per-task lambdas, and frozen earlier LoRAs in a real run."""
import pytest
import torch
from torch import nn

from continual_lm import run
from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import build_method
from continual_lm.methods.olora import new_lora_norm, orthogonality_loss
from continual_lm.models.lora_bank import LoRABank
from continual_lm.models.inject import find_lora_banks

from helpers import PhaseRecorder, tiny_config

TASKS = ["sentiment", "animal_class", "reverse"]


def bank_with(*As):
    bank = LoRABank(nn.Linear(6, 5), r=2, alpha=2, dropout=0.0)
    for A in As:
        bank.add_lora()
        with torch.no_grad():
            bank.lora_A[-1].copy_(torch.as_tensor(A, dtype=torch.float32))
    return bank


def test_orthogonality_loss_is_zero_for_orthogonal_As_and_the_abs_sum_otherwise():
    e = torch.eye(6)
    orthogonal = bank_with(e[0:2], e[2:4], e[4:6])
    assert orthogonality_loss([orthogonal]).item() == 0.0
    A0, A1 = torch.randn(2, 6), torch.randn(2, 6)
    A2 = torch.randn(2, 6)
    overlapping = bank_with(A0, A1, A2)
    expected = (A0 @ A2.T).abs().sum() + (A1 @ A2.T).abs().sum()  # only the newest against each earlier one
    assert orthogonality_loss([overlapping]).item() == pytest.approx(expected.item(), rel=1e-5)
    assert orthogonality_loss([overlapping, orthogonal]).item() == pytest.approx(expected.item(), rel=1e-5)
    assert orthogonality_loss([bank_with(A0)]) is None  # the first task has nothing to be orthogonal to
    # the loss pushes only the new A: its gradient is nonzero, and zero at an orthogonal configuration
    overlapping.lora_A[0].requires_grad_(False)
    overlapping.lora_A[1].requires_grad_(False)
    orthogonality_loss([overlapping]).backward()
    assert overlapping.lora_A[2].grad.abs().sum() > 0


def test_new_lora_norm_is_the_frobenius_norms_of_the_newest_A_and_B():
    bank = bank_with(torch.randn(2, 6), torch.randn(2, 6))
    with torch.no_grad():
        bank.lora_B[1].fill_(0.5)
    expected = torch.linalg.norm(bank.lora_A[1]) + torch.linalg.norm(bank.lora_B[1])
    assert new_lora_norm([bank]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_lambdas_per_task_and_their_errors(tmp_path):
    config = tiny_config(tmp_path, "olora", method_options={"olora": {"lambda1": [0.0, 1.5, 2.0], "lambda2": 0.25}})
    method = build_method(config)
    assert [method.options.for_task("lambda1", i, 3) for i in range(3)] == [0.0, 1.5, 2.0]
    assert method.options.for_task("lambda2", 2, 3) == 0.25
    with pytest.raises(ContinualLMError, match="--olora-lambda1: got 3 values, expected one per task \\(5\\)"):
        method.options.for_task("lambda1", 0, 5)
    with pytest.raises(ContinualLMError, match="--olora-lambda2: expected a number >= 0"):
        build_method(tiny_config(tmp_path, "olora", method_options={"olora": {"lambda2": -1.0}}))


def test_olora_run_freezes_earlier_loras_and_adds_the_loss(tmp_path, monkeypatch):
    from continual_lm.methods.olora import OLoRA
    from continual_lm.models.backbone import load_backbone

    losses = []  # (number of LoRAs, extra loss) per training step
    original_extra = OLoRA.extra_loss

    def recording_extra(self, model, batch, outputs):
        loss = original_extra(self, model, batch, outputs)
        losses.append((next(iter(self.banks.values())).num_loras, loss))
        return loss

    monkeypatch.setattr(OLoRA, "extra_loss", recording_extra)
    recorder = PhaseRecorder()
    snapshots = recorder.records
    backbone = load_backbone("tiny-random-llama", seed=3)
    results = run(tiny_config(tmp_path, "olora", tasks=TASKS), backbone=backbone, callbacks=[recorder])
    assert all(bank.num_loras == 3 for bank in find_lora_banks(backbone.model).values())
    assert results["method"] == "olora" and len(snapshots) == 3
    assert all(loss is None for n, loss in losses if n == 1)  # task 1: no earlier LoRA
    later = [loss for n, loss in losses if n > 1]
    assert later and all(loss.item() > 0 for loss in later)  # random A's are not orthogonal: the term is active
    for t in range(2):
        keys = [k for k in snapshots[t] if f"lora_A.{t}" in k or f"lora_B.{t}" in k]
        assert keys and all(snapshots[t][k].abs().sum() > 0 for k in keys if "lora_B" in k)  # task t trained it
        for k in keys:
            assert torch.equal(snapshots[-1][k], snapshots[t][k]), f"{k} moved after task {t}"
