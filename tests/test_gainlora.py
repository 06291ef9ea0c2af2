"""GainLoRA: the gate and integration formulas on small tensors, gates of later tasks ~0 on earlier tasks' inputs
after a real run (for both bases, and not without the update constraint), and an exact resume."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from continual_lm.config import RunConfig
from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import TrainExample, build_method
from continual_lm.methods.gainlora import GainLoRA
from continual_lm.methods.registry import split_method_spec
from continual_lm.models.backbone import load_backbone
from continual_lm.train.assemble import prepare_run
from continual_lm.train.engine import check_engine

from helpers import (checkpoint_method_tensors, checkpoint_tensors, NoTaskIds,
                     run_crashed_in_first_evaluation_then_resumed, set_up_method, tiny_config)

TASKS = ["sentiment", "animal_class", "reverse"]


def test_gates_and_the_gated_sum_follow_the_papers_formulas(tmp_path):
    method, backbone = set_up_method(tmp_path, "gainlora", TASKS, before_tasks=2)
    model = backbone.model.eval()
    torch.manual_seed(1)
    for bank in method.banks.values():
        for B in bank.lora_B:
            torch.nn.init.normal_(B, std=0.5)
    batch = next(method.context.train_batches([TrainExample(0, e) for e in method.tasks[0].train[:3]]))
    # a_i = |2 sigmoid(4 cos(k_i, SiLU(U_i SiLU(D_i pool(x))))) - 1|, pool = mean embedding of the input tokens
    keep = batch["attention_mask"].bool() & (batch["labels"] == -100)  # a causal LM's answer is no input
    embeds = model.get_input_embeddings()(batch["input_ids"])
    pooled = torch.stack([embeds[b][keep[b]].mean(0) for b in range(embeds.shape[0])])
    expected = []
    for gate in method.gates.gates:
        z = F.silu(gate.up.weight @ F.silu(gate.down.weight @ pooled.T)).T
        cos = (z @ gate.key) / (z.norm(dim=1) * gate.key.norm())
        expected.append((2 * torch.sigmoid(4 * cos) - 1).abs())
    a = method.gate_values(batch)
    assert a.shape == (3, 2) and torch.allclose(a, torch.stack(expected, 1), atol=1e-6)
    # each adapted projection: h = W0 x + sum_i a_i (alpha / r) B_i A_i x, a_i per input, the same at every position
    name, bank = next(iter(method.banks.items()))
    seen = {}
    handle = bank.register_forward_hook(lambda m, i, o: seen.update(x=i[0], h=o))
    with torch.no_grad():
        method.forward(model, batch)
    handle.remove()
    x = seen["x"]
    gated = sum(a[:, i, None, None] * (x @ bank.lora_A[i].T @ bank.lora_B[i].T) for i in range(2))
    assert torch.allclose(seen["h"], bank.base(x) + bank.scaling * gated, atol=1e-5)
    assert method.gates.gates[0].key.requires_grad is False and method.gates.gates[1].key.requires_grad


def _gate_values_on_training_inputs(method, task_index):
    batches = method.context.train_batches([TrainExample(task_index, e) for e in method.tasks[task_index].train])
    with torch.no_grad():
        return torch.cat([method.gate_values(batch) for batch in batches])


def _run(tmp_path, options, tasks=TASKS, constrained=True):
    config = tiny_config(tmp_path, "gainlora", tasks=tasks, method_options={"gainlora": options})
    prepared = prepare_run(config, output_dir=tmp_path / "run", backbone=load_backbone("tiny-random-llama", seed=3))
    if not constrained:
        prepared.runner.method.after_optimizer_step = lambda model, optimizer: None
    return prepared.runner, prepared.start()


def _check_gates(method, tasks: int):
    """Every task's own gate is open on its training inputs, every later task's gate is closed there."""
    for j in range(tasks):
        a = _gate_values_on_training_inputs(method, j)
        assert a.shape[1] == tasks and a[:, j].min() > 0.3
        if j < tasks - 1:
            assert a[:, j + 1:].abs().max() < 1e-4, (j, a[:, j + 1:].abs().max())


def test_later_gates_are_zero_on_earlier_tasks_inputs_and_a_resume_is_exact(tmp_path, monkeypatch):
    reference, results = _run(tmp_path / "a", {})
    method = reference.method
    assert len(method.gates.gates) == 3 and all(m.shape[1] > 0 for m in method.gate_memory.values())
    _check_gates(method, 3)  # gate 3 on task 1's inputs: the chain of copied D, U and projected updates holds
    assert not any(bank.lora_A[-1].requires_grad for bank in method.banks.values())  # InfLoRA base: designed A's
    # --resume after phase 0: gates, gate memories, branch memories and designed A's come back exactly
    resumed = run_crashed_in_first_evaluation_then_resumed(
        lambda where: tiny_config(where, "gainlora", tasks=TASKS), tmp_path / "b")
    assert resumed["matrix"] == results["matrix"]
    for name, read in (("trainable", checkpoint_tensors), ("method state", checkpoint_method_tensors)):
        a, b = (read(tmp_path / run / "run", 2) for run in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert any(k.startswith("gate.") for k in a) and any(k.startswith("down.") for k in a)
    model = reference.model.eval()
    batch = next(method.context.prompt_batches(0, [e.input for e in method.tasks[0].test[:2]]))
    assert method.generate(model, NoTaskIds(batch), 3).shape[0] == 2  # fails the test if a task id is read
    assert '"sentiment"' in (tmp_path / "a" / "run" / "gainlora_gates.json").read_text()
    from continual_lm.api import export_run, load_run  # the own format holds the designed (never trained) A's too

    summary = export_run(load_run(tmp_path / "a" / "run"), tmp_path / "export")
    exported = load_file(tmp_path / "export" / summary["own_format"])
    trained = checkpoint_tensors(tmp_path / "a" / "run", 2)
    assert any(k.startswith("gainlora_gates") for k in trained)
    assert all(torch.equal(exported[k], v) for k, v in trained.items())
    bank_name, bank = next(iter(method.banks.items()))
    assert torch.equal(exported[f"{bank_name}.lora_A.2"], bank.lora_A[2].detach())


def test_olora_base_and_that_the_update_constraint_is_what_closes_the_gates(tmp_path):
    runner, _ = _run(tmp_path / "olora", {"base": "olora"}, tasks=TASKS[:2])
    _check_gates(runner.method, 2)
    assert all(bank.lora_A[-1].requires_grad for bank in runner.method.banks.values())  # O-LoRA trains its A's
    assert not runner.method.memory  # and keeps no branch memories
    free, _ = _run(tmp_path / "free", {}, tasks=TASKS[:2], constrained=False)  # only the initial key orthogonal
    assert _gate_values_on_training_inputs(free.method, 0)[:, 1].abs().max() > 1e-3


def test_gainlora_options_compositions_and_engines(tmp_path):
    assert split_method_spec("gainlora+replay+migu") == ["gainlora", "replay", "migu"]
    with pytest.raises(ContinualLMError, match="gainlora cannot be combined with ewc"):
        split_method_spec("gainlora+ewc")
    with pytest.raises(ContinualLMError, match="--gainlora-base: expected one of inflora, olora"):
        build_method(tiny_config(tmp_path, "gainlora", method_options={"gainlora": {"base": "lora"}}))
    method = build_method(tiny_config(tmp_path, "gainlora", method_options={"gainlora": {"lambda1": [0.1, 0.2]}}))
    with pytest.raises(ContinualLMError, match="--gainlora-lambda1: got 2 values, expected one per task \\(3\\)"):
        method.options.lambda1_for(0, 3)
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 2}}, zero3_init_flag=False)
    deepspeed = SimpleNamespace(distributed_type=SimpleNamespace(name="DEEPSPEED"), num_processes=2,
                                state=SimpleNamespace(deepspeed_plugin=plugin))
    config = RunConfig(method="gainlora")
    with pytest.raises(ContinualLMError, match="gainlora edits parameters after each optimizer step.*DDP"):
        check_engine(deepspeed, build_method(config), config)
    assert GainLoRA.uses_task_id_at_test is False and GainLoRA.uses_replay is False
    assert math.isclose(2 * torch.sigmoid(torch.tensor(4.0)).item() - 1, 0.9640, abs_tol=1e-4)  # the gate's maximum


def test_a_new_key_gets_the_norm_of_a_fresh_key_not_the_previous_trained_one(tmp_path):
    """get_reg_matrix scales the designed key to the norm of the task's freshly initialised prompt_key (uniform in
    [-1, 1]: at most sqrt(d)); only trans_input (D, U) is loaded from the previous task (run_t5.py)."""
    method, backbone = set_up_method(tmp_path, "gainlora", TASKS[:2], before_tasks=1)
    model = backbone.model
    examples = [[TrainExample(t, e) for e in method.tasks[t].train[:4]] for t in range(2)]
    method.train_examples(0, examples[0])
    with torch.no_grad():
        method.gates.gates[0].key.mul_(100.0)  # a trained key far from a fresh key's scale
    method.before_task(model, 1, method.tasks[1])
    old, new = method.gates.gates
    assert torch.equal(new.down.weight, old.down.weight) and torch.equal(new.up.weight, old.up.weight)
    fresh_norm = float(new.key.detach().norm())
    method.train_examples(1, examples[1])
    d = new.key.numel()
    assert float(new.key.detach().norm()) == pytest.approx(fresh_norm, rel=1e-5) and fresh_norm <= math.sqrt(d)
