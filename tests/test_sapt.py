"""SAPT (sapt-lora, sapt-prompt): shared attention, frozen earlier blocks, ARM (KL, generator), no task id at test
time, end to end on a tiny causal and seq2seq model, resume after a crash."""
import json
from pathlib import Path

import pytest
import torch

from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import TrainExample, build_method
from continual_lm.methods.sapt import GEN_MARKER, SAPTLoRA, SAPTPrompt
from continual_lm.train.loop import run

from helpers import (NoTaskIds, run_crashed_in_first_evaluation_then_resumed, tiny_config, set_up_method,
                     checkpoint_tensors)

TWO_TASKS = ["sentiment", "reverse"]


def built(tmp_path, method, model="tiny-random-llama", tasks=2, **options):
    """A set-up SAPT method with ``tasks`` blocks on a tiny backbone and a minimal run context (no loop)."""
    return set_up_method(tmp_path, method, TWO_TASKS, model, before_tasks=tasks,
                         options={"generator_max_tokens": 6, **options})


def prompt_batch(sapt, texts, task_index=0):
    return next(sapt.context.prompt_batches(task_index, texts, batch_size=len(texts)))


def test_options_are_checked():
    with pytest.raises(ContinualLMError, match="--sapt-\\*-arm: expected one of kl, none, replay"):
        build_method(tiny_config(Path("/tmp"), method="sapt-lora", method_options={"sapt-lora": {"arm": "x"}}))
    assert SAPTLoRA.uses_task_id_at_test is False and SAPTPrompt.uses_task_id_at_test is False


@pytest.mark.parametrize("method", ["sapt-lora", "sapt-prompt"])
def test_attention_rows_sum_to_one_and_only_the_new_block_trains(tmp_path, method):
    sapt, backbone = built(tmp_path, method)
    batch = prompt_batch(sapt, ["a great film", "x", "the cat sat on the mat"])
    weights = sapt.attention_weights(batch["input_ids"], batch["attention_mask"].bool())
    assert weights.shape == (3, 2) and torch.allclose(weights.sum(-1), torch.ones(3))
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    block = "lora_" if method == "sapt-lora" else "sapt_prompts.prompts."
    assert {n.rsplit(".", 1)[-1] for n in trainable if block in n} == {"1"}  # only the newest block
    assert {n for n in trainable if "sapt_attention" in n} == {
        "sapt_attention.down.weight", "sapt_attention.up.weight", "sapt_attention.norm.weight",
        "sapt_attention.norm.bias", "sapt_attention.keys.1"}
    assert not trainable - {n for n in trainable if block in n or "sapt_attention" in n}


def test_lora_update_is_the_attention_weighted_combination(tmp_path):
    sapt, backbone = built(tmp_path, "sapt-lora")
    bank = next(iter(sapt.banks.values()))
    bank.eval()
    torch.manual_seed(1)
    for B in bank.lora_B:
        B.data.normal_()
    x = torch.randn(2, 3, bank.in_features)
    weights = torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    sapt.mixer.weights = weights
    with torch.no_grad():
        got = bank(x)
        for b in range(2):
            expected = bank.base(x[b]) + sum(weights[b, i] * x[b] @ bank.delta_weight(i).T for i in range(2))
            assert torch.allclose(got[b], expected, atol=1e-5)


def test_kl_is_zero_at_the_stored_mean_and_reaches_only_the_query_path(tmp_path):
    sapt, backbone = built(tmp_path, "sapt-lora")
    batch = prompt_batch(sapt, ["a pseudo input of task 0"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        current = sapt.attention_weights(ids, mask.bool())[0]
    assert sapt.kl_loss(ids, mask, current).abs().item() < 1e-6
    padded = sapt.kl_loss(ids, mask, torch.tensor([1.0]))  # stored with one block, zero-padded to two
    assert padded.item() > 0 and torch.isclose(padded, -torch.log(current[0]), atol=1e-5)
    backbone.model.zero_grad(set_to_none=True)
    padded.backward()
    with_grad = {n for n, p in backbone.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"sapt_attention.down.weight", "sapt_attention.up.weight"} <= with_grad
    # the query projection and the current task's key (as in the reference code); no block, no earlier key
    assert with_grad <= {"sapt_attention.down.weight", "sapt_attention.up.weight", "sapt_attention.norm.weight",
                         "sapt_attention.norm.bias", "sapt_attention.keys.1"}


@pytest.mark.parametrize("arm", ["kl", "replay"])
def test_training_examples_hold_out_inputs_and_replay_pseudo_samples(tmp_path, arm):
    sapt, _ = built(tmp_path, "sapt-lora", arm=arm, attention_holdout=1)
    sapt.pseudo = {0: [{"input": "pseudo question", "output": "pseudo answer"}]}
    examples = [TrainExample(1, e) for e in sapt.tasks[1].train]
    kept = sapt.train_examples(1, examples)
    assert [e.example for e in kept if e.task_index == 1] == sapt.tasks[1].train[:-1]  # last input held out
    replayed = [(e.task_index, e.example.input, e.example.target) for e in kept if e.task_index == 0]
    assert replayed == ([(0, "pseudo question", "pseudo answer")] if arm == "replay" else [])


@pytest.mark.parametrize("method", ["sapt-lora", "sapt-prompt"])
def test_generate_never_reads_a_task_id(tmp_path, method):
    sapt, backbone = built(tmp_path, method)
    batch = prompt_batch(sapt, ["a great film", "the cat"])
    guarded = NoTaskIds(batch, task_ids=torch.tensor([0, 1]))
    out = sapt.generate(backbone.model.eval(), guarded, 3)
    assert out.shape[0] == 2 and out.shape[1] == batch["input_ids"].shape[1] + 3


@pytest.mark.parametrize("method,model", [("sapt-lora", "tiny-random-llama"), ("sapt-prompt", "tiny-random-t5")])
def test_generator_writes_non_empty_pseudo_inputs_from_the_gen_marker(tmp_path, method, model):
    sapt, backbone = built(tmp_path, method, model=model, tasks=1, pseudo_count=3)
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in backbone.model.named_parameters()}
    prompts = []
    original = sapt.generate_with

    def spy(model_, input_ids, attention_mask, weights, **kwargs):
        prompts.append(sapt.context.collator.tokenizer.batch_decode(input_ids, skip_special_tokens=True))
        assert torch.equal(weights[:, -1], torch.ones(len(weights)))  # the generator block alone
        return original(model_, input_ids, attention_mask, weights, **kwargs)

    sapt.generate_with = spy
    texts = sapt.generate_pseudo_inputs(backbone.model, 0, [e.input for e in sapt.tasks[0].train])
    assert prompts == [[GEN_MARKER] * 3]
    assert texts and all(isinstance(t, str) and t.strip() for t in texts)
    after = dict(backbone.model.named_parameters())
    assert set(after) == set(before)  # the temporary generator block is gone
    for name, (flag, value) in before.items():
        assert after[name].requires_grad == flag and torch.equal(after[name].detach(), value)


def _sapt_config(tmp_path, method, model, arm):
    return tiny_config(tmp_path, method=method, model=model, tasks=TWO_TASKS, max_train_per_task=8,
                       method_options={method: {"arm": arm, "pseudo_count": 2, "generator_max_tokens": 6}})


@pytest.mark.parametrize("method,model,arm", [
    ("sapt-lora", "tiny-random-llama", "kl"),
    ("sapt-prompt", "tiny-random-t5", "kl"),
    ("sapt-lora", "tiny-random-t5", "replay"),
    ("sapt-prompt", "tiny-random-llama", "none"),
])
def test_end_to_end_frozen_blocks_heatmaps_and_resume(tmp_path, monkeypatch, method, model, arm):
    reference = run(_sapt_config(tmp_path / "a", method, model, arm))
    out = tmp_path / "a" / "run"
    first = checkpoint_tensors(out, 0)
    second = checkpoint_tensors(out, 1)
    earlier = [n for n in first if n.endswith(".0") and ("lora_" in n or ".keys." in n or ".prompts." in n)]
    assert earlier and all(torch.equal(first[n], second[n]) for n in earlier)  # bit-identical through task 2
    assert not torch.equal(first["sapt_attention.down.weight"], second["sapt_attention.down.weight"])
    state = json.loads((out / "checkpoints" / "phase_01" / "method_state.json").read_text())
    if arm == "none":
        assert state["pseudo"] == {}
    else:
        assert len(state["pseudo"]["0"]) >= 1 and all(p["input"] for p in state["pseudo"]["0"])
        assert all(isinstance(p["output"], str) for p in state["pseudo"]["0"])  # replay: the model's answers
    assert abs(sum(state["mean_attention"]["1"]) - 1) < 1e-5 and len(state["mean_attention"]["0"]) == 1
    heat = json.loads((out / "sapt_attention.json").read_text())
    assert len(heat["test"]) == 2 and all(abs(sum(row) - 1) < 1e-5 for row in heat["test"])
    assert heat["train"][0] == [1.0, 0.0]
    for label in ("train", "test"):
        assert (out / f"sapt_attention_{label}_heatmap.png").stat().st_size > 0
        assert f"sapt_attention_{label}_heatmap.png" in (out / "report.md").read_text()

    resumed = run_crashed_in_first_evaluation_then_resumed(
        monkeypatch, lambda where: _sapt_config(where, method, model, arm), tmp_path / "b")
    assert resumed["matrix"] == reference["matrix"] and resumed["metrics"] == reference["metrics"]
    assert json.loads((tmp_path / "b" / "run" / "sapt_attention.json").read_text()) == heat
    resumed_second = checkpoint_tensors(tmp_path / "b" / "run", 1)
    assert all(torch.equal(second[n], resumed_second[n]) for n in second)
