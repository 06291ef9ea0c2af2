"""lm_forward: the loss over the answer positions only gives the Hugging Face loss's gradients (to float rounding: the
two logits shapes may take differently blocked kernels on some CPUs, so equality is not asserted bit for bit); the
evaluation-mode context the methods' hooks use."""
import pytest
import torch

from continual_lm.data.collate import Collator
from continual_lm.data.demo import demo_tasks
from continual_lm.models.backbone import default_lora_targets, load_backbone
from continual_lm.models.inject import inject_lora_banks
from continual_lm.models.lm_forward import answer_columns, evaluating, lm_forward, model_mode
from continual_lm.models.prompt_bank import PromptBank, prepend_prompt, prompt_forward

from helpers import PhaseRecorder, tiny_config


def demo_batch(backbone, rows=6):
    """Right-padded training rows of different lengths from two demo tasks (answers at different columns)."""
    collator = Collator(backbone.tokenizer, backbone.is_seq2seq, 256, 6)
    tasks = demo_tasks(n_train=rows, n_test=2)
    items = [collator.encode_train(tasks[k % 2], tasks[k % 2].train[k], k % 2) for k in range(rows)]
    return collator.train_batch(items)


def lora_model(alias, freeze=True):
    """LoRA on a frozen backbone (as the LoRA methods train), or on a trainable one (full fine-tuning's gradients)."""
    torch.manual_seed(0)
    backbone = load_backbone(alias, seed=0)
    backbone.model.requires_grad_(not freeze)
    for bank in inject_lora_banks(backbone.model, default_lora_targets(backbone.model), 4, 8.0, 0.0).values():
        bank.add_lora()
        torch.nn.init.normal_(bank.lora_B[0])  # nonzero B: the LoRA A matrices get gradients too
    return backbone


def loss_and_grads(model, forward):
    model.zero_grad(set_to_none=True)
    outputs = forward()
    outputs.loss.backward()
    return outputs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_answer_columns_are_the_positions_that_predict_some_answer_token():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, -100, -100, -100, 7]])
    assert answer_columns(labels).tolist() == [1, 2, 3]
    assert answer_columns(torch.full((2, 4), -100)).numel() == 0


@pytest.mark.parametrize("freeze", [True, False], ids=["lora", "full-fine-tuning"])
def test_causal_lm_gradients_equal_the_full_logits_loss(freeze):
    """To float rounding (bit for bit on the CPUs seen here for a frozen backbone's LoRAs; another CPU's kernels may
    block the two logits shapes differently). A loss over the wrong positions would miss by far more."""
    backbone = lora_model("tiny-random-llama", freeze)
    model, batch = backbone.model, demo_batch(backbone)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # a ragged batch: the answers sit at different columns
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    full, full_grads = loss_and_grads(model, lambda: model(**inputs, labels=batch["labels"]))
    kept, kept_grads = loss_and_grads(model, lambda: lm_forward(model, batch["labels"], **inputs))
    columns = answer_columns(batch["labels"])
    assert kept.logits.shape == (6, len(columns), full.logits.shape[-1]) and len(columns) < full.logits.shape[1]
    assert torch.allclose(kept.logits, full.logits[:, columns], rtol=1e-5, atol=1e-6)
    assert torch.allclose(kept.loss, full.loss, rtol=1e-6, atol=0)
    assert set(kept_grads) == set(full_grads) and any("lora_A" in n for n in kept_grads)
    assert ("lm_head.weight" in full_grads) == (not freeze)
    for name, grad in full_grads.items():
        assert torch.allclose(kept_grads[name], grad, rtol=1e-5, atol=1e-8), name


def test_prompt_forward_keeps_the_answer_positions_after_the_prompt():
    backbone = lora_model("tiny-random-llama")
    model, batch = backbone.model, demo_batch(backbone, rows=4)
    bank = PromptBank(model.get_input_embeddings(), length=3)
    bank.add_prompt()
    full_inputs = prepend_prompt(model, batch["input_ids"], batch["attention_mask"], bank.prompts[0], batch["labels"])
    full, full_grads = loss_and_grads(model, lambda: model(**full_inputs))
    kept, kept_grads = loss_and_grads(model, lambda: prompt_forward(model, batch, bank.prompts[0]))
    assert kept.logits.shape[1] == len(answer_columns(full_inputs["labels"])) < full.logits.shape[1]
    assert torch.allclose(kept.loss, full.loss, rtol=1e-6, atol=0)
    for name, grad in full_grads.items():
        assert torch.allclose(kept_grads[name], grad, rtol=1e-5, atol=1e-8), name
    every = prompt_forward(model, batch, bank.prompts[0], all_logits=True)
    assert every.logits.shape == full.logits.shape


@pytest.mark.parametrize("alias", ["tiny-random-t5", "tiny-random-bert"])
def test_seq2seq_and_masked_models_take_their_own_loss(alias):
    backbone = lora_model(alias)
    model = backbone.model
    ids = torch.randint(5, 200, (2, 7))
    labels = ids.clone()
    labels[:, :4] = -100
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    expected = model(**inputs, labels=labels)
    got = lm_forward(model, labels, **inputs)
    assert got.logits.shape == expected.logits.shape and torch.equal(got.loss, expected.loss)


def test_a_batch_without_answers_falls_back_to_the_model_loss():
    backbone = lora_model("tiny-random-llama")
    ids = torch.randint(5, 200, (2, 7))
    outputs = lm_forward(backbone.model, torch.full_like(ids, -100), input_ids=ids)
    assert outputs.logits.shape[1] == 7


@pytest.mark.parametrize("method", ["seqlora", "lfpt5"])
def test_a_run_trains_the_same_weights_as_with_the_full_logits_loss(tmp_path, monkeypatch, method):
    """The whole loop, once with lm_forward and once with the model's own loss: the same weights after each phase, to
    float rounding (seen bit for bit here, not on every CPU). A step on the wrong positions would move them by ~lr."""
    from continual_lm.models import lm_forward as module
    from continual_lm import run

    def trained(tag):
        recorder = PhaseRecorder()
        config = tiny_config(tmp_path, method=method, output_dir=str(tmp_path / tag), max_train_per_task=6)
        run(config, output_dir=tmp_path / tag, callbacks=[recorder])
        return recorder.records

    kept = trained("kept")
    monkeypatch.setattr(module, "keeps_answer_logits", lambda model_class: False)
    full = trained("full")
    assert len(kept) == len(full) == 5
    for after_kept, after_full in zip(kept, full):
        for name, value in after_full.items():
            assert torch.allclose(after_kept[name], value, rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_switches_every_module_and_restores_the_previous_mode(training):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train(training)
    with evaluating(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
        with model_mode(model, training=True):  # e.g. a generator trained inside an evaluation-mode hook
            assert all(m.training for m in model.modules())
        assert not any(m.training for m in model.modules())
    assert all(m.training == training for m in model.modules())
    with pytest.raises(RuntimeError):
        with evaluating(model):
            raise RuntimeError("a hook failed")
    assert all(m.training == training for m in model.modules())  # restored after an exception too
