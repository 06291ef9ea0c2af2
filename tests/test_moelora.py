"""MoELoRA: token-level router weights sum to 1, the router grows one row per expert with stable names, earlier
experts stay frozen while the new expert and the router train."""
import torch

from continual_lm import run
from continual_lm.methods.base import build_method
from continual_lm.models.backbone import load_backbone
from continual_lm.models.inject import find_lora_banks

from helpers import PhaseRecorder, tiny_config

TASKS = ["sentiment", "animal_class", "reverse"]


def test_router_weights_sum_to_one_per_token_and_rows_have_stable_names(tmp_path):
    backbone = load_backbone("tiny-random-llama", seed=3)
    model = backbone.model
    method = build_method(tiny_config(tmp_path, "moelora"))
    assert not method.uses_task_id_at_test
    method.setup(model, backbone)
    for t in range(3):
        method.before_task(model, t, None)
    banks = find_lora_banks(model)
    names = {n for n, _ in model.named_parameters()}
    for bank_name, bank in banks.items():
        assert bank.num_loras == 3 and len(bank.mixer.weight) == 3
        assert {f"{bank_name}.mixer.weight.{i}" for i in range(3)} <= names
        assert {f"{bank_name}.mixer.bias.{i}" for i in range(3)} <= names
        with torch.no_grad():
            for row in bank.mixer.weight:
                row.normal_(std=0.5)
    outputs = {name: [] for name in banks}  # what each bank's mixer computes
    hooks = [bank.mixer.register_forward_hook(lambda module, args, out, name=name: outputs[name].append(out))
             for name, bank in banks.items()]
    input_ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    for hook in hooks:
        hook.remove()
    for name in banks:
        weights, = outputs[name]
        assert weights.shape == (2, 7, 3)  # one distribution per token
        assert torch.all(weights >= 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 7))
        assert (weights[0, 0] - weights[0, 1]).abs().max() > 1e-4  # token-level: tokens get different mixtures


def test_earlier_experts_frozen_new_expert_and_router_train(tmp_path):
    recorder = PhaseRecorder()
    snapshots = recorder.records
    backbone = load_backbone("tiny-random-llama", seed=3)
    base = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    results = run(tiny_config(tmp_path, "moelora", tasks=TASKS), backbone=backbone, callbacks=[recorder])
    assert results["method"] == "moelora" and len(snapshots) == 3
    last = snapshots[-1]
    for name, value in base.items():  # the backbone never moves
        key = name.replace("q_proj.weight", "q_proj.base.weight").replace("v_proj.weight", "v_proj.base.weight")
        assert torch.equal(last[key], value), name
    for t in range(2):
        expert = [k for k in snapshots[t] if f"lora_A.{t}" in k or f"lora_B.{t}" in k]
        assert expert and all(snapshots[t][k].abs().sum() > 0 for k in expert if "lora_B" in k)  # task t trained it
        for k in expert:
            assert torch.equal(last[k], snapshots[t][k]), f"expert {k} moved after task {t}"
    router_row0 = [k for k in last if k.endswith("mixer.weight.0")]
    assert router_row0 and any(not torch.equal(last[k], snapshots[0][k]) for k in router_row0)  # router trains on
