"""InfLoRA: the GPM memory, the designed down-projection, and a run whose A's stay orthogonal to the memory,
frozen, and identical after a resume."""
import math

import pytest
import torch

from continual_lm.methods.inflora import InfLoRA, design_down_projection, gpm_threshold, gpm_update
from continual_lm.methods.registry import split_method_spec
from continual_lm.errors import ContinualLMError
from continual_lm.models.backbone import load_backbone
from continual_lm.models.inject import find_lora_banks
from continual_lm import run

from helpers import (checkpoint_method_tensors, checkpoint_tensors, PhaseRecorder,
                     run_crashed_in_first_evaluation_then_resumed, tiny_config)

TASKS = ["sentiment", "animal_class"]


def rotated(eigenvalues, seed=0):
    """A covariance with the given eigenvalues in a random orthonormal basis; returns (covariance, basis)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64)).Q
    return basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.T, basis


def spans(memory, vectors) -> float:
    """Largest distance of a column of ``vectors`` from span(memory)."""
    M = memory.double()
    return float((vectors - M @ (M.T @ vectors)).norm(dim=0).max())


def test_gpm_keeps_the_fewest_directions_that_reach_the_threshold_energy():
    cov, basis = rotated([5.0, 3.0, 1.5, 0.5, 0.0, 0.0])  # energies 50 %, 30 %, 15 %, 5 %
    memory = gpm_update(None, cov, 0.75)  # 50 % < 75 % <= 80 %: two directions
    assert memory.shape == (6, 2) and spans(memory, basis[:, :2]) < 1e-5
    assert torch.allclose(memory.T @ memory, torch.eye(2), atol=1e-5)
    assert gpm_update(None, cov, 0.8).shape[1] == 2 and gpm_update(None, cov, 0.81).shape[1] == 3
    assert gpm_update(None, cov, 1.0).shape[1] == 4  # never directions the inputs do not have
    # the reference code's criterion squares the covariance's eigenvalues: 25/(25+9+2.25+.25) = 68 % for one direction
    assert gpm_update(None, cov, 0.75, criterion="code").shape[1] == 1
    # a later task: energy already inside the memory counts; only the residual's leading directions are added
    later, later_basis = rotated([4.0, 1.0, 0.0, 0.0, 0.0, 0.0], seed=1)
    grown = gpm_update(memory, later, 0.99)
    assert grown.shape[1] > 2 and spans(grown, basis[:, :2]) < 1e-5 and spans(grown, later_basis[:, :2]) < 1e-5
    assert torch.allclose(grown.T @ grown, torch.eye(grown.shape[1]), atol=1e-5)
    assert gpm_update(grown, later, 0.99) is grown  # nothing new: unchanged
    assert gpm_threshold(0.95, 0, 10) == 0.95 and gpm_threshold(0.95, 5, 10) == pytest.approx(0.975)


def test_designed_down_projection_avoids_the_memory_and_follows_the_new_inputs():
    cov, basis = rotated([9.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05])
    memory = basis[:, [0, 2]].float()  # the earlier tasks hold the new task's strongest and third direction
    A = design_down_projection(cov, memory, r=3)
    assert A.shape == (3, 8)
    assert (A @ memory.double()).abs().max() < 1e-6  # A_t x = 0 for every input x of the earlier tasks
    assert torch.allclose(A.norm(dim=1), torch.full((3,), 1 / math.sqrt(3), dtype=A.dtype), atol=1e-6)
    expected = basis[:, [1, 3, 4]]  # the leading directions of the inputs outside the memory, in order
    assert torch.allclose((A * math.sqrt(3) @ expected).abs(), torch.eye(3, dtype=A.dtype), atol=1e-6)
    full = torch.linalg.qr(torch.randn(8, 6, dtype=torch.float64)).Q.float()  # only 2 free directions for r = 3
    A = design_down_projection(cov, full, r=3)
    assert A[2].abs().max() == 0 and (A[:2] @ full.double()).abs().max() < 1e-6


def _run(tmp_path, monkeypatch, model="tiny-random-llama", tasks=TASKS):
    designed = []  # A's right after their design, per task
    original = InfLoRA.train_examples

    def recording(self, task_index, examples):
        result = original(self, task_index, examples)
        designed.append({n: b.lora_A[task_index].detach().clone() for n, b in self.banks.items()})
        return result

    monkeypatch.setattr(InfLoRA, "train_examples", recording)
    recorder = PhaseRecorder(lambda run: {
        "memory": {n: M.clone() for n, M in run.method.memory.items()},
        "params": {n: p.detach().clone() for n, p in run.model.named_parameters()}})
    backbone = load_backbone(model, seed=3)
    results = run(tiny_config(tmp_path, "inflora", model=model, tasks=tasks), backbone=backbone, callbacks=[recorder])
    return backbone, results, designed, recorder.records


def test_designed_down_projections_are_orthogonal_to_the_memory_frozen_and_resume_exactly(tmp_path, monkeypatch):
    backbone, results, designed, snaps = _run(tmp_path / "a", monkeypatch)
    monkeypatch.undo()
    banks = find_lora_banks(backbone.model)
    T = len(TASKS)
    assert len(designed) == T and all(b.num_loras == T for b in banks.values())
    for name, bank in banks.items():
        assert not any(A.requires_grad for A in bank.lora_A)  # only the B's train
        for t in range(T):
            A_key, B_key = f"{name}.lora_A.{t}", f"{name}.lora_B.{t}"
            assert torch.equal(snaps[t]["params"][A_key], designed[t][name])  # unchanged by its own training
            assert torch.equal(snaps[-1]["params"][A_key], designed[t][name])  # and by the later tasks'
            assert snaps[t]["params"][B_key].abs().sum() > 0  # B_t trained
            if t:  # orthogonal to the subspace stored after the earlier tasks (which is not empty)
                memory = snaps[t - 1]["memory"][name]
                assert memory.shape[1] > 0 and (designed[t][name] @ memory).abs().max() < 1e-5
        assert snaps[1]["memory"][name].shape[1] >= snaps[0]["memory"][name].shape[1]  # the memory only grows
    # --resume after phase 0: the memory and the designed A's come back from method_state.safetensors
    resumed = run_crashed_in_first_evaluation_then_resumed(
        lambda where: tiny_config(where, "inflora", tasks=TASKS), tmp_path / "b")
    assert resumed["matrix"] == results["matrix"]
    for name, read in (("trainable", checkpoint_tensors), ("method state", checkpoint_method_tensors)):
        a, b = (read(tmp_path / run / "run", 1) for run in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_input_covariances_count_each_projections_real_tokens_on_a_seq2seq_model(tmp_path):
    from continual_lm.methods.base import TrainExample
    from continual_lm.methods.inflora import InputCovariance

    from helpers import set_up_method

    method, backbone = set_up_method(tmp_path, "inflora", ["sentiment"], model="tiny-random-t5", before_tasks=1,
                                     max_input_length=400)
    model = backbone.model.eval()
    stats = InputCovariance(model, method.banks)
    encoder_tokens = answer_tokens = positions = 0
    with torch.no_grad():
        for batch in method.context.train_batches([TrainExample(0, e) for e in method.tasks[0].train]):
            stats.set_batch(batch)
            method.forward(model, batch)
            encoder_tokens += int(batch["attention_mask"].sum())
            answer_tokens += int((batch["labels"] != -100).sum())
            positions += batch["attention_mask"].numel()
    stats.remove()
    assert encoder_tokens < positions  # the inputs are padded: a wrong mask would count more
    for name, count in stats.counts.items():
        reads_encoder = name.startswith("encoder.") or "EncDecAttention.v" in name
        assert count == (encoder_tokens if reads_encoder else answer_tokens), name
    assert len(stats.counts) == len(method.banks)


def test_inflora_on_a_seq2seq_model(tmp_path, monkeypatch):
    _, _, designed, snaps = _run(tmp_path, monkeypatch, model="tiny-random-t5")
    for name, A in designed[1].items():  # encoder, decoder and cross-attention (encoder-reading) projections
        assert (A @ snaps[0]["memory"][name]).abs().max() < 1e-5


def test_inflora_composes_with_replay_and_migu_but_not_ewc(tmp_path):
    assert split_method_spec("inflora+replay+migu") == ["inflora", "replay", "migu"]
    with pytest.raises(ContinualLMError, match="inflora cannot be combined with ewc"):
        split_method_spec("inflora+ewc")
    with pytest.raises(ContinualLMError, match="--inflora-threshold: expected a number in \\(0, 1\\]"):
        from continual_lm.methods.base import build_method
        build_method(tiny_config(tmp_path, "inflora", method_options={"inflora": {"threshold": 0.0}}))


@pytest.mark.parametrize("spec", ["inflora+migu", "gainlora+migu"])
def test_migu_masks_the_trained_up_projections_when_the_down_projection_is_frozen(tmp_path, spec):
    """InfLoRA (and GainLoRA's InfLoRA base) train only B_t: MIGU must still rank and mask B_t's rows by x_B."""
    from continual_lm.methods.base import TrainExample
    from continual_lm.methods.migu import units_to_mask

    from helpers import set_up_method

    method, backbone = set_up_method(tmp_path, spec, ["sentiment"], before_tasks=1)
    model = backbone.model.train()
    torch.manual_seed(1)
    for bank in find_lora_banks(model).values():
        torch.nn.init.normal_(bank.lora_B[-1], std=0.1)  # B = 0 ties every x_B: nothing could be ranked
    batch = next(method.context.train_batches([TrainExample(0, e) for e in method.tasks[0].train[:4]]))
    method.before_forward(model, batch)
    method.forward(model, batch).loss.backward()
    method.after_backward(model)
    migu = method.parts[-1]
    for name, bank in find_lora_banks(model).items():
        assert not bank.lora_A[-1].requires_grad and bank.lora_A[-1].grad is None
        zero_rows = int((bank.lora_B[-1].grad.abs().sum(1) == 0).sum())
        assert zero_rows == units_to_mask(migu.threshold, bank.out_features), name


@pytest.mark.parametrize("base", ["inflora", "gainlora", "nlora"])
def test_composed_with_replay_and_migu_a_run_keeps_each_methods_property(tmp_path, monkeypatch, base):
    """X+replay+migu runs end to end: replayed examples of task 0 are in phase 1, the earlier LoRA stays frozen, and
    the method's own guarantee holds on the composition (InfLoRA: A_1 orthogonal to the memory of task 0's inputs;
    GainLoRA: gate 1 closed on task 0's inputs although the replayed task-0 inputs train it)."""
    from continual_lm.methods.base import Composite, TrainExample

    recorder = PhaseRecorder(lambda run: {
        "params": {n: p.detach().clone() for n, p in run.model.named_parameters()},
        "memory": {n: M.clone() for n, M in getattr(run.method.base, "memory", {}).items()}})
    seen = []
    backbone = load_backbone("tiny-random-llama", seed=3)
    config = tiny_config(tmp_path, f"{base}+replay+migu", tasks=TASKS, max_train_per_task=6, max_test_per_task=2)
    runner_method = []
    real = Composite.train_examples

    def spy(self, task_index, examples):
        result = real(self, task_index, examples)
        seen.append(sorted({e.task_index for e in result}))
        runner_method.append(self)
        return result

    monkeypatch.setattr(Composite, "train_examples", spy)
    run(config, backbone=backbone, callbacks=[recorder])
    snaps = recorder.records
    assert seen == [[0], [0, 1]]  # replay mixes task 0's examples into phase 1
    keys = [k for k in snaps[0]["params"] if ".lora_A.0" in k or ".lora_B.0" in k]
    assert keys and all(torch.equal(snaps[1]["params"][k], snaps[0]["params"][k]) for k in keys)
    method = runner_method[-1].base
    if base == "inflora":
        for name, bank in method.banks.items():
            assert (bank.lora_A[1].detach() @ snaps[0]["memory"][name]).abs().max() < 1e-5
    if base == "gainlora":
        batches = method.context.train_batches([TrainExample(0, e) for e in method.tasks[0].train])
        with torch.no_grad():
            a = torch.cat([method.gate_values(b) for b in batches])
        assert a[:, 0].min() > 0.3 and a[:, 1].abs().max() < 1e-4
