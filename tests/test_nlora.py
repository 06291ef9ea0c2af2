"""N-LoRA: the L1 term on the new task's update (the paper's B A and the reference code's A B), its gradients in a
training step of the method, frozen earlier LoRAs in a real run, and the option errors."""
import pytest
import torch
from torch import nn

from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import TrainExample, build_method
from continual_lm.methods.nlora import update_l1
from continual_lm.methods.registry import split_method_spec
from continual_lm.models.backbone import load_backbone
from continual_lm.models.inject import find_lora_banks
from continual_lm.models.lora_bank import LoRABank
from continual_lm import run

from helpers import PhaseRecorder, set_up_method, tiny_config


def test_l1_of_the_new_update_and_its_gradient():
    bank = LoRABank(nn.Linear(5, 5), r=2, alpha=4, dropout=0.0)
    bank.add_lora()
    bank.add_lora()
    torch.manual_seed(0)
    for p in (*bank.lora_A, *bank.lora_B):
        nn.init.normal_(p)
    bank.lora_A[0].requires_grad_(False)
    bank.lora_B[0].requires_grad_(False)
    A, B = bank.lora_A[1], bank.lora_B[1]
    loss = update_l1([bank])
    assert loss.item() == pytest.approx((B @ A).abs().sum().item(), rel=1e-6)  # only the newest LoRA, no alpha/r
    loss.backward()
    sign = torch.sign((B @ A).detach())
    assert torch.allclose(B.grad, sign @ A.detach().T) and torch.allclose(A.grad, B.detach().T @ sign)
    assert update_l1([bank], "code").item() == pytest.approx((A @ B).abs().sum().item(), rel=1e-6)  # r x r


def test_the_penalty_reaches_the_gradients_of_a_training_step(tmp_path):
    lam = 0.25
    grads = {}
    for weight in (0.0, lam):
        method, backbone = set_up_method(tmp_path, "nlora", ["sentiment", "reverse"], before_tasks=2,
                                         options={"lambda1": weight})
        model = backbone.model.eval()
        torch.manual_seed(1)
        for bank in method.banks.values():
            nn.init.normal_(bank.lora_B[-1], std=0.1)  # B = 0 would make B A = 0, where |.| has no gradient
        batch = next(method.context.train_batches([TrainExample(1, e) for e in method.tasks[1].train[:4]]))
        outputs = method.forward(model, batch)
        extra = method.extra_loss(model, batch, outputs)
        (outputs.loss + extra if extra is not None else outputs.loss).backward()
        grads[weight] = {n: (b.lora_A[-1].grad.clone(), b.lora_B[-1].grad.clone(), b.lora_A[-1].detach().clone(),
                             b.lora_B[-1].detach().clone(), b.lora_A[0].grad) for n, b in method.banks.items()}
    for name, (gA, gB, A, B, old) in grads[lam].items():
        sign = torch.sign(B @ A)
        assert torch.allclose(gB - grads[0.0][name][1], lam * sign @ A.T, atol=1e-5)  # d/dB of lam ||B A||_1
        assert torch.allclose(gA - grads[0.0][name][0], lam * B.T @ sign, atol=1e-5)
        assert old is None  # the earlier task's LoRA is frozen


def test_nlora_run_freezes_earlier_loras_and_its_options(tmp_path, monkeypatch):
    recorder = PhaseRecorder()
    backbone = load_backbone("tiny-random-llama", seed=3)
    config = tiny_config(tmp_path, "nlora", tasks=["sentiment", "reverse"], method_options={"nlora": {"lambda1": 1e-3}})
    run(config, backbone=backbone, callbacks=[recorder])
    snapshots = recorder.records
    assert all(bank.num_loras == 2 for bank in find_lora_banks(backbone.model).values())
    keys = [k for k in snapshots[0] if ".lora_A.0" in k or ".lora_B.0" in k]
    assert keys and all(torch.equal(snapshots[1][k], snapshots[0][k]) for k in keys)
    assert all(snapshots[1][k].abs().sum() > 0 for k in snapshots[1] if ".lora_B.1" in k)
    assert split_method_spec("nlora+replay+migu") == ["nlora", "replay", "migu"]
    with pytest.raises(ContinualLMError, match="nlora cannot be combined with ewc"):
        split_method_spec("nlora+ewc")
    with pytest.raises(ContinualLMError, match="--nlora-penalty: expected one of delta, code"):
        build_method(tiny_config(tmp_path, "nlora", method_options={"nlora": {"penalty": "l2"}}))
    with pytest.raises(ContinualLMError, match="--nlora-penalty code: .*v_proj is 64 -> 32"):  # tiny llama's GQA
        set_up_method(tmp_path, "nlora", ["sentiment"], options={"penalty": "code"})
    with pytest.raises(ContinualLMError, match="--nlora-lambda1: got 2 values, expected one per task \\(1\\)"):
        set_up_method(tmp_path, "nlora", ["sentiment"], options={"lambda1": [0.1, 0.2]})


def test_paper_preset_follows_each_llama_script_and_the_lora_config_of_run_n_lora():
    from continual_lm.config import RunConfig
    from continual_lm.presets import resolve_preset

    def resolved(family, **settings):
        return resolve_preset(RunConfig.from_dict({"method": "nlora", "preset": "paper", **settings}), family)[0]

    # scripts_llama/order_N.sh (tasks 2-4; the first task's lr differs and is not an option): lr, batch x accumulation,
    # lamda_1 differ per order
    expected = {"1": (1e-4, 6, 8, 0.46), "2": (5e-5, 4, 8, 0.38), "3": (1e-4, 1, 8, 0.4)}
    for order, (lr, batch, accum, lam) in expected.items():
        config = resolved("llama", benchmark="standard", order=order)
        assert (config.lr, config.batch_size, config.grad_accum) == (lr, batch, accum), order
        assert config.method_options["nlora"]["lambda1"] == lam, order
    config = resolved("t5", benchmark="long", order="5")  # run_N_lora.py: LoraConfig(r=lora_dim 8, alpha 32, 0.1)
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (8, 32, 0.1)
