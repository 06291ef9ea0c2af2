"""SAPT (sapt-lora, sapt-prompt): the paper's equations on small tensors (Eq. 1-3 attention and combination, Eq. 5
KL), frozen earlier blocks, ARM (a KL batch of every earlier task per step, the generator's own budget), the
learning rates (soft-prompt default, the query projection's own rate), no held-out training data, no task id at
test time, end to end on a tiny causal and seq2seq model, resume after a crash."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import TrainExample, build_method
from continual_lm.methods.sapt import GEN_MARKER, SAPTLoRA, SAPTPrompt, SharedAttention
from continual_lm.train import loop
from continual_lm import run

from helpers import (NoTaskIds, run_crashed_in_first_evaluation_then_resumed, tiny_config, set_up_method,
                     checkpoint_tensors)

TWO_TASKS = ["sentiment", "reverse"]


def built(tmp_path, method, model="tiny-random-llama", tasks=2, **options):
    """A set-up SAPT method with ``tasks`` blocks on a tiny backbone and a minimal run context (no loop)."""
    return set_up_method(tmp_path, method, TWO_TASKS, model, before_tasks=tasks,
                         options={"generator_max_tokens": 6, "generator_steps": 2, **options})


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


def test_declared_protocol():
    for cls in (SAPTLoRA, SAPTPrompt):
        assert cls.uses_task_id_at_train is True  # phase t trains block t and key t
        assert cls.uses_task_id_at_test is False and cls.uses_replay is False and cls.uses_pseudo_samples is True


# ---- the paper's equations on small tensors --------------------------------------------------------------------
@pytest.mark.parametrize("form", ["paper", "reference"])
def test_attention_is_eq_1_and_2_by_hand(form):
    torch.manual_seed(0)
    attention = SharedAttention(hidden_size=4, query_hidden=3, temperature=2.0, form=form)
    for _ in range(3):
        attention.add_key()
    embeds = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = attention(embeds, mask)
    W_down, W_up, keys = attention.down.weight, attention.up.weight, torch.stack(list(attention.keys))
    for b in range(2):
        x = embeds[b, mask[b].bool()].max(dim=0).values  # max-pool over the input tokens (padding excluded)
        if form == "paper":
            h = W_up @ (W_down @ x * torch.sigmoid(W_down @ x))  # W_up SiLU(W_down x)
        else:
            h = (W_up @ W_down @ x) * torch.sigmoid(W_up @ W_down @ x)  # SiLU(W_up W_down x)
        q = (h - h.mean()) / torch.sqrt(h.var(unbiased=False) + attention.norm.eps)  # LayerNorm (weight 1, bias 0)
        a = torch.softmax(keys @ q / 2.0, dim=0)
        assert torch.allclose(got[b], a, atol=1e-6)
    # padding never changes an input's attention: the same input alone, without padding
    alone = attention(embeds[:1, :3], torch.ones(1, 3, dtype=torch.long))
    assert torch.allclose(alone[0], got[0], atol=1e-6)


def test_temperature_is_sqrt_d_model(tmp_path):
    sapt, _ = built(tmp_path, "sapt-lora")
    assert sapt.attention.temperature == math.sqrt(sapt.embedding.weight.shape[1])


def test_kl_is_eq_5_by_hand_and_equals_the_references_kldivloss(tmp_path):
    sapt, _ = built(tmp_path, "sapt-lora", tasks=2)
    batch = prompt_batch(sapt, ["a pseudo input", "another pseudo input of the task"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    stored = torch.tensor([1.0])  # the stored mean of task 0 (one block then), zero-padded to two blocks
    got = sapt.kl_loss(ids, mask, stored)
    with torch.no_grad():
        a = sapt.attention_weights(ids, mask.bool())
    padded = torch.tensor([1.0, 0.0])
    by_hand = sum(sum(padded[i] * math.log(padded[i] / a[b, i]) for i in range(2) if padded[i] > 0)
                  for b in range(2)) / 2
    assert torch.isclose(got, torch.tensor(float(by_hand)), atol=1e-6)
    reference = F.kl_div(torch.log(a), padded.expand(2, 2), reduction="batchmean")  # nn.KLDivLoss(batchmean)
    assert torch.isclose(got, reference, atol=1e-6)


def test_prompt_block_is_the_attention_weighted_sum_of_the_prompts(tmp_path, monkeypatch):
    sapt, backbone = built(tmp_path, "sapt-prompt")
    seen = {}
    monkeypatch.setattr("continual_lm.methods.prompt_method.prompt_forward",
                        lambda model, batch, prompt: seen.setdefault("prompt", prompt))
    batch = next(sapt.context.train_batches([TrainExample(0, e) for e in sapt.tasks[0].train[:2]]))
    sapt.forward(backbone.model, batch)
    mask = batch["attention_mask"].bool() & (batch["labels"] == -100)
    weights = sapt.attention_weights(batch["input_ids"], mask)
    expected = torch.stack([sum(weights[b, i] * sapt.bank.prompts[i] for i in range(2)) for b in range(2)])
    assert torch.allclose(seen["prompt"], expected, atol=1e-6)


# ---- learning rates (issue 17.3) -------------------------------------------------------------------------------
def test_sapt_prompt_defaults_to_the_soft_prompt_lr_and_resolves_the_query_lr():
    prompt = build_method(tiny_config(Path("/tmp"), method="sapt-prompt", lr=None))
    assert prompt.default_lr() == 3e-2 and prompt.options.query_lr == 3e-2  # paper Appendix C, SuperNI: 3e-2
    lora = build_method(tiny_config(Path("/tmp"), method="sapt-lora", lr=None))
    assert lora.default_lr() == 1e-3 and lora.options.query_lr == 1e-3
    given = build_method(tiny_config(Path("/tmp"), method="sapt-prompt", lr=0.3,
                                     method_options={"sapt-prompt": {"query_lr": 1e-2}}))
    assert given.options.query_lr == 1e-2


def test_the_loop_trains_the_query_projection_at_its_own_lr(tmp_path, monkeypatch):
    groups = []
    original = loop.start_training

    def spy(accelerator, model, loader, make_optimizer):
        training = original(accelerator, model, loader, make_optimizer)
        names = {id(p): n for n, p in model.named_parameters()}
        groups.append([(g["lr"], sorted(names[id(p)] for p in g["params"])) for g in training.optimizer.param_groups])
        return training

    monkeypatch.setattr(loop, "start_training", spy)
    config = tiny_config(tmp_path, method="sapt-prompt", tasks=TWO_TASKS, lr=None, max_train_per_task=4,
                         method_options={"sapt-prompt": {"arm": "none", "query_lr": 1e-2}})
    run(config)
    (main_lr, main), (query_lr, query) = groups[1]
    assert main_lr == 3e-2 and main == ["sapt_attention.keys.1", "sapt_prompts.prompts.1"]
    assert query_lr == 1e-2 and query == ["sapt_attention.down.weight", "sapt_attention.norm.bias",
                                          "sapt_attention.norm.weight", "sapt_attention.up.weight"]


# ---- ARM: eta and the KL schedule (issue 17.4) -----------------------------------------------------------------
def test_eta_defaults_to_the_papers_value():
    assert SAPTLoRA.Options().eta == 0.5 and SAPTPrompt.Options().eta == 0.5  # Appendix C (T5, SuperNI)


def test_each_step_adds_one_kl_batch_of_every_earlier_task(tmp_path, monkeypatch):
    """Three tasks: training task 2 adds, per step, eta * (KL of a batch of task 0 + KL of a batch of task 1), each
    batch --batch-size (4) pseudo inputs of its task; successive steps walk through each task's pseudo inputs."""
    sapt, _ = set_up_method(tmp_path, "sapt-lora", ["sentiment", "reverse", "arithmetic"], before_tasks=3,
                            max_input_length=256, options={"eta": 0.25})
    sapt.pseudo = {j: [{"input": f"pseudo {j} number {k}", "output": ""} for k in range(6)] for j in range(2)}
    sapt.mean_attention = {0: [1.0], 1: [0.25, 0.75]}
    decode = sapt.context.collator.tokenizer.batch_decode
    prompts = {j: set(decode(prompt_batch(sapt, [p["input"] for p in sapt.pseudo[j]], j)["input_ids"],
                             skip_special_tokens=True)) for j in range(2)}
    calls = []
    original = sapt.kl_loss

    def spy(ids, mask, stored):
        calls.append((ids, mask, stored))
        return original(ids, mask, stored)

    monkeypatch.setattr(sapt, "kl_loss", spy)
    loss = sapt.extra_loss(None, None, None)
    assert [stored.tolist() for _, _, stored in calls] == [[1.0], [0.25, 0.75]]  # one batch of each earlier task
    texts = [set(decode(ids, skip_special_tokens=True)) for ids, _, _ in calls]
    assert [len(t) for t in texts] == [4, 4] and texts[0] <= prompts[0] and texts[1] <= prompts[1]
    with torch.no_grad():
        by_hand = sum(original(ids, mask, stored) for ids, mask, stored in calls)
    assert torch.isclose(loss, 0.25 * by_hand, atol=1e-6)
    sapt.extra_loss(None, None, None)  # the next step: the remaining 2 of each task's 6 (then a new pass)
    texts = [set(decode(ids, skip_special_tokens=True)) for ids, _, _ in calls]
    assert [len(t) for t in texts] == [4, 4, 2, 2]
    assert texts[0] | texts[2] == prompts[0] and texts[1] | texts[3] == prompts[1]  # each once per pass


def test_no_kl_before_a_second_task_or_without_arm(tmp_path):
    sapt, _ = built(tmp_path, "sapt-lora", tasks=1)
    assert sapt.extra_loss(None, None, None) is None
    sapt, _ = built(tmp_path, "sapt-lora", tasks=2, arm="none")
    sapt.pseudo, sapt.mean_attention = {0: [{"input": "x", "output": ""}]}, {0: [1.0]}
    assert sapt.extra_loss(None, None, None) is None


@pytest.mark.parametrize("arm", ["kl", "none", "replay"])
def test_every_training_example_is_trained_on_and_replay_adds_pseudo_samples(tmp_path, arm):
    sapt, _ = built(tmp_path, "sapt-lora", arm=arm)
    sapt.pseudo = {0: [{"input": "pseudo question", "output": "pseudo answer"}]}
    examples = [TrainExample(1, e) for e in sapt.tasks[1].train]
    kept = sapt.train_examples(1, examples)
    assert [e.example for e in kept if e.task_index == 1] == sapt.tasks[1].train  # nothing held out (issue 17.6)
    replayed = [(e.task_index, e.example.input, e.example.target) for e in kept if e.task_index == 0]
    assert replayed == ([(0, "pseudo question", "pseudo answer")] if arm == "replay" else [])


def test_stored_attention_is_the_mean_over_all_training_inputs_of_the_task(tmp_path):
    sapt, backbone = built(tmp_path, "sapt-lora", arm="none")
    task = sapt.tasks[1]
    sapt.after_task(backbone.model, 1, task, [TrainExample(1, e) for e in task.train])
    batch = prompt_batch(sapt, [e.input for e in task.train], task_index=1)
    with torch.no_grad():
        expected = sapt.attention_weights(batch["input_ids"], batch["attention_mask"].bool()).mean(0)
    assert torch.allclose(torch.tensor(sapt.mean_attention[1]), expected, atol=1e-6)


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
    original = sapt.generator_generate

    def spy(model_, input_ids, attention_mask, **kwargs):
        prompts.append(sapt.context.collator.tokenizer.batch_decode(input_ids, skip_special_tokens=True))
        assert kwargs["do_sample"] and kwargs["top_k"] == 20 and kwargs["repetition_penalty"] == 2.5
        return original(model_, input_ids, attention_mask, **kwargs)

    sapt.generator_generate = spy
    texts = sapt.generate_pseudo_inputs(backbone.model, 0, [e.input for e in sapt.tasks[0].train])
    assert prompts == [[GEN_MARKER] * 3]
    assert texts and all(isinstance(t, str) and t.strip() for t in texts)
    after = dict(backbone.model.named_parameters())
    assert set(after) == set(before)  # the temporary generator block is gone
    for name, (flag, value) in before.items():
        assert after[name].requires_grad == flag and torch.equal(after[name].detach(), value)
    if method == "sapt-lora":
        assert all(not bank._forward_hooks for bank in sapt.banks.values())  # its hooks are removed


class OptimizerSpy:
    """Records the generator's optimiser: its class, its parameter shapes and learning rate, and its steps."""

    def __init__(self, monkeypatch, sapt):
        self.steps, self.batches = 0, []
        original = sapt._generator_optimizer

        def make(params):
            optimizer = original(params)
            self.kind = type(optimizer).__name__
            self.shapes = [tuple(p.shape) for p in params]
            self.lrs = [g["lr"] for g in optimizer.param_groups]
            step = optimizer.step

            def counted(*args, **kwargs):
                self.steps += 1
                return step(*args, **kwargs)

            optimizer.step = counted
            return optimizer

        monkeypatch.setattr(sapt, "_generator_optimizer", make)
        forward = sapt.generator_forward

        def spy_forward(model, batch):
            self.batches.append(batch["input_ids"].shape[0])
            return forward(model, batch)

        monkeypatch.setattr(sapt, "generator_forward", spy_forward)


def test_generator_budget_defaults_are_the_papers():
    lora, prompt = SAPTLoRA.Options(), SAPTPrompt.Options()
    assert (lora.generator_epochs, lora.generator_batch_size, lora.generator_lr, lora.generator_optimizer) == (
        80, 16, 1e-3, "adamw")
    assert (lora.generator_rank, lora.generator_alpha, lora.generator_dropout) == (8, 32.0, 0.1)
    assert (prompt.generator_epochs, prompt.generator_batch_size, prompt.generator_lr, prompt.generator_optimizer,
            prompt.generator_prompt_length) == (80, 16, 0.5, "adafactor", 300)
    sapt = build_method(tiny_config(Path("/tmp"), method="sapt-lora", max_input_length=48))
    assert sapt.options.generator_max_tokens == 48  # resolved from the run: recorded with the options
    assert sapt.generator_step_count(1000) == 80 * 63 and sapt.generator_step_count(24) == 80 * 2


@pytest.mark.parametrize("method,shapes,kind,lr", [
    ("sapt-lora", "rank 8 A and B per bank", "AdamW", 1e-3),
    ("sapt-prompt", "one 300-token prompt", "Adafactor", 0.5),
])
def test_generator_trains_its_own_budget_and_block(tmp_path, monkeypatch, method, shapes, kind, lr):
    """Steps, batch size, lr, optimiser and the block's size come from the generator_* options (issue 17.5)."""
    sapt, backbone = built(tmp_path, method, tasks=1, pseudo_count=1, generator_steps=None, generator_epochs=3,
                           generator_batch_size=3)
    sapt.options.generator_max_tokens = 4
    spy = OptimizerSpy(monkeypatch, sapt)
    inputs = [e.input for e in sapt.tasks[0].train]  # 8 inputs: 3 batches (3, 3, 2) per epoch
    sapt.generate_pseudo_inputs(backbone.model, 0, inputs)
    assert spy.steps == 9 and spy.batches == [3, 3, 2] * 3
    assert spy.kind == kind and spy.lrs == [lr]
    hidden = sapt.embedding.weight.shape[1]
    if method == "sapt-lora":
        banks = list(sapt.banks.values())
        assert spy.shapes == [s for b in banks for s in ((8, b.in_features), (b.out_features, 8))]
    else:
        assert spy.shapes == [(300, hidden)]


def test_generator_steps_override_the_epochs(tmp_path, monkeypatch):
    sapt, backbone = built(tmp_path, "sapt-lora", tasks=1, pseudo_count=1, generator_steps=5, generator_batch_size=4)
    spy = OptimizerSpy(monkeypatch, sapt)
    sapt.generate_pseudo_inputs(backbone.model, 0, [e.input for e in sapt.tasks[0].train])
    assert spy.steps == 5 and spy.batches == [4, 4, 4, 4, 4]


def _sapt_config(tmp_path, method, model, arm):
    return tiny_config(tmp_path, method=method, model=model, tasks=TWO_TASKS, max_train_per_task=8,
                       method_options={method: {"arm": arm, "pseudo_count": 2, "generator_max_tokens": 6,
                                                "generator_steps": 2}})


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
    # routing after each task: task 1 alone on its one block, then both tasks over two blocks; after the stream a
    # task's mean share of its own block is the diagonal of the test-time heatmap (the same inputs and weights)
    routing = heat["routing"]["after_task"]
    assert [entry["after"] for entry in routing] == TWO_TASKS
    assert routing[0]["tasks"] == {TWO_TASKS[0]: {"all": {"share": 1.0, "margin": 1.0, "top1": 1.0, "n": 4}}}
    for j, task in enumerate(TWO_TASKS):
        assert routing[1]["tasks"][task]["all"]["share"] == pytest.approx(heat["test"][j][j], abs=1e-5)
    for label in ("train", "test"):
        assert (out / f"sapt_attention_{label}_heatmap.png").stat().st_size > 0
        assert f"sapt_attention_{label}_heatmap.png" in (out / "report.md").read_text()

    resumed = run_crashed_in_first_evaluation_then_resumed(
        lambda where: _sapt_config(where, method, model, arm), tmp_path / "b")
    assert resumed["matrix"] == reference["matrix"] and resumed["metrics"] == reference["metrics"]
    assert json.loads((tmp_path / "b" / "run" / "sapt_attention.json").read_text()) == heat
    resumed_second = checkpoint_tensors(tmp_path / "b" / "run", 1)
    assert all(torch.equal(second[n], resumed_second[n]) for n in second)
