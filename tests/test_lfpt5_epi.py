"""LFPT5 and EPI on the shared soft-prompt bank: the Mahalanobis task selector on planted Gaussians, what is frozen
stays bit-identical, no raw samples in EPI's state, LFPT5's pseudo samples and the rate at which the loop trains on
them, the KL term, and both methods end to end on a tiny causal and seq2seq model with resume after a crash."""
import json
from pathlib import Path

import pytest
import torch

from continual_lm.data.collate import Collator
from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import build_method
from continual_lm.methods.epi import TASK_ID_JSON, MahalanobisSelector
from continual_lm.methods.lfpt5 import ANSWER_MARKER, generator_marker
from continual_lm.models.backbone import load_backbone
from continual_lm.train import loop
from continual_lm import run
from continual_lm.data.stream import load_stream_for

from helpers import (run_crashed_in_first_evaluation_then_resumed, tiny_config, set_up_method, checkpoint_tensors,
                     checkpoint_method_tensors)

TWO_TASKS = ["sentiment", "animal_class"]


def test_options_are_checked():
    for method, option, value, message in [
        ("lfpt5", "pseudo_fraction", 2.0, r"--lfpt5-pseudo-fraction: expected a number in \[0, 1\]"),
        ("lfpt5", "lm_weight", -1, "--lfpt5-lm-weight: expected a number >= 0"),
        ("epi", "shrinkage", 1.5, r"--epi-shrinkage: expected a number in \[0, 1\]"),
        ("epi", "prompt_length", 0, "--epi-prompt-length: expected an integer >= 1"),
    ]:
        with pytest.raises(ContinualLMError, match=message):
            build_method(tiny_config(Path("/tmp"), method=method, method_options={method: {option: value}}))


# ---- EPI ---------------------------------------------------------------------------------------------------------
def planted_tasks(generator, tasks=3, classes=2, n=200, hidden=6):
    """Gaussians with one shared, strongly anisotropic covariance: the tasks' class means differ only along the
    low-variance directions, so the Euclidean nearest mean is close to chance while Mahalanobis separates them."""
    scales = torch.tensor([30.0, 30.0, 30.0, 0.3, 0.3, 0.3])[:hidden]
    means = torch.zeros(tasks, classes, hidden)
    for t in range(tasks):
        for c in range(classes):
            means[t, c, 3 + t % 3] = 3.0 * (1 + c)  # task t lives along low-variance axis 3 + t
    samples = [[means[t, c] + scales * torch.randn(n, hidden, generator=generator) for c in range(classes)]
               for t in range(tasks)]
    return samples


def test_mahalanobis_selector_picks_the_planted_task_where_euclidean_fails():
    g = torch.Generator().manual_seed(0)
    train, test = planted_tasks(g), planted_tasks(g, n=100)
    selector = MahalanobisSelector(shrinkage=0.0)
    for per_class in train:
        selector.add_task(torch.cat(per_class), [c for c, rows in enumerate(per_class) for _ in rows])
    assert [m.shape for m in selector.means] == [(2, 6)] * 3 and selector.covariances[0].shape == (6, 6)
    features = torch.cat([torch.cat(per_class) for per_class in test])
    truth = torch.arange(3).repeat_interleave(200)
    accuracy = (selector.select(features) == truth).float().mean().item()
    means = torch.stack(selector.means)  # [T, C, H]
    euclidean = torch.cdist(features, means.flatten(0, 1)).view(len(features), 3, 2).min(-1).values.argmin(-1)
    assert accuracy > 0.97 and (euclidean == truth).float().mean().item() < 0.6
    reloaded = MahalanobisSelector(shrinkage=0.0)
    reloaded.load(selector.state())
    assert torch.equal(reloaded.distances(features), selector.distances(features))
    # a task without labels keeps one mean (generation tasks)
    selector.add_task(torch.randn(50, 6, generator=g) + 100)
    assert selector.means[-1].shape == (1, 6) and selector.select(torch.full((1, 6), 100.0)).item() == 3


def _resume_matches(tmp_path, monkeypatch, make_config, reference):
    resumed = run_crashed_in_first_evaluation_then_resumed(make_config, tmp_path / "b")
    assert resumed["matrix"] == reference["matrix"] and resumed["metrics"] == reference["metrics"]
    return tmp_path / "b" / "run"


@pytest.mark.parametrize("model", ["tiny-random-llama", "tiny-random-t5"])
def test_epi_end_to_end_frozen_prompts_statistics_and_resume(tmp_path, monkeypatch, model):
    def make_config(where):
        return tiny_config(where, method="epi", model=model, tasks=TWO_TASKS)

    backbone = load_backbone(model, seed=3)
    base = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    reference = run(make_config(tmp_path / "a"), backbone=backbone)
    after = dict(backbone.model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in base.items())  # the backbone never moved
    out = tmp_path / "a" / "run"
    first = checkpoint_tensors(out, 0)
    second = checkpoint_tensors(out, 1)
    assert set(second) == {"epi_prompts.prompts.0", "epi_prompts.prompts.1"}
    assert torch.equal(first["epi_prompts.prompts.0"], second["epi_prompts.prompts.0"])  # frozen after task 1
    assert [p.requires_grad for p in backbone.model.epi_prompts.prompts] == [False, True]
    assert not any(p.requires_grad for n, p in backbone.model.named_parameters() if not n.startswith("epi_prompts"))
    # statistics only: class means and covariances in safetensors, nothing textual in the JSON
    stats = checkpoint_method_tensors(out, 1)
    hidden = backbone.model.get_input_embeddings().weight.shape[1]
    stream = load_stream_for(make_config(tmp_path / "a")).tasks
    classes = [len({e.target for e in task.train}) for task in stream]  # one mean per class seen in training
    assert {n: tuple(t.shape) for n, t in stats.items()} == {
        "means.0": (classes[0], hidden), "means.1": (classes[1], hidden), "covariances.0": (hidden, hidden),
        "covariances.1": (hidden, hidden)}
    meta_text = (out / "checkpoints" / "phase_01" / "method_state.json").read_text()
    assert not any(e.input in meta_text or e.target in meta_text for t in stream for e in t.train)
    identification = json.loads((out / TASK_ID_JSON).read_text())
    assert identification["tasks"] == TWO_TASKS and 0 <= identification["accuracy"] <= 100
    assert all(abs(sum(row) - 1) < 1e-9 for row in identification["confusion"])
    assert "epi_task_identification_heatmap.png" in (out / "report.md").read_text()

    resumed = _resume_matches(tmp_path, monkeypatch, make_config, reference)
    assert json.loads((resumed / TASK_ID_JSON).read_text()) == identification
    again = checkpoint_method_tensors(resumed, 1)
    assert all(torch.equal(stats[n], again[n]) for n in stats)


def test_epi_generate_never_reads_a_task_id_and_uses_the_selected_prompt(tmp_path):
    method, backbone = built(tmp_path, "epi", "tiny-random-llama")
    model = backbone.model.eval()
    for j in range(2):
        method.before_task(model, j, method.tasks[j])
        method.after_task(model, j, method.tasks[j], [])
    batch = next(method.context.prompt_batches(1, [e.input for e in method.tasks[1].test[:3]], batch_size=3))
    chosen = method.select_tasks(model, batch)
    seen = []
    original = method.bank.gather
    method.bank.gather = lambda indices: seen.append(indices.clone()) or original(indices)
    out = method.generate(model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, 2)
    assert out.shape == (3, batch["input_ids"].shape[1] + 2) and torch.equal(seen[0], chosen)


# ---- LFPT5 -------------------------------------------------------------------------------------------------------
def built(tmp_path, method, model, **options):
    return set_up_method(tmp_path, method, TWO_TASKS, model, options=options)


@pytest.mark.parametrize("model", ["tiny-random-llama", "tiny-random-t5"])
def test_lfpt5_generation_format_and_parsing(tmp_path, model):
    lfpt5, backbone = built(tmp_path, "lfpt5", model, generator_max_tokens=40)
    tokenizer = backbone.tokenizer
    encoded = lfpt5.lm_encoded(0, lfpt5.tasks[0].train[0])
    target = [t for t in encoded.labels if t != -100]
    assert tokenizer.decode(target, skip_special_tokens=True).replace(" ", "").endswith(
        f"{ANSWER_MARKER}{lfpt5.tasks[0].train[0].target}")
    source = encoded.input_ids if backbone.is_seq2seq else encoded.input_ids[:len(encoded.input_ids) - len(target)]
    assert tokenizer.decode(source, skip_special_tokens=True) == generator_marker(lfpt5.tasks[0])
    # real sampling from the marker gives text; parsing keeps valid labels and relabels the rest
    model_ = backbone.model.eval()
    assert all(isinstance(t, str) for t in lfpt5.sample_generations(model_, 0, 3))
    lfpt5.sample_generations = lambda m, j, n: [f"a lovely hat {ANSWER_MARKER} positive", "no answer here",
                                                f" {ANSWER_MARKER} negative", f"dull tea {ANSWER_MARKER} blue"][:n]
    lfpt5.greedy_answers = lambda m, j, inputs: [f"solver:{x}" for x in inputs]
    assert lfpt5.generate_pseudo_samples(model_, 0, 2) == [
        {"input": "a lovely hat", "output": "positive"}, {"input": "no answer here", "output": "solver:no answer here"}]
    lfpt5.options.relabel_invalid = False  # the reference: invalid samples are dropped
    assert lfpt5.generate_pseudo_samples(model_, 0, 2) == [{"input": "a lovely hat", "output": "positive"}]


def test_lfpt5_kl_is_zero_at_the_teacher_and_trains_only_the_prompt(tmp_path):
    lfpt5, backbone = built(tmp_path, "lfpt5", "tiny-random-llama")
    model = backbone.model
    assert lfpt5.train_examples(0, []) == [] and lfpt5.teacher is None  # no pseudo samples yet: no teacher
    lfpt5.pseudo = {0: [{"input": "a great film", "output": "positive"}]}
    mixed = lfpt5.train_examples(1, [])
    assert [(e.task_index, e.example.input) for e in mixed] == [(0, "a great film")]
    assert torch.equal(lfpt5.teacher, lfpt5.prompt.detach())
    batch = next(lfpt5.context.train_batches(mixed + mixed))
    batch["task_ids"] = torch.tensor([0, 1])  # row 0 is a pseudo sample, row 1 the current task
    rows = batch["task_ids"] < 1
    outputs = lfpt5.forward(model, batch)
    assert lfpt5.kl_loss(model, batch, outputs.logits, rows).abs().item() < 1e-5
    with torch.no_grad():
        lfpt5.prompt.add_(torch.randn_like(lfpt5.prompt))
    outputs = lfpt5.forward(model, batch)
    kl = lfpt5.kl_loss(model, batch, outputs.logits, rows)
    assert kl.item() > 0
    kl.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"lfpt5_prompt.prompts.0"}


@pytest.mark.parametrize("model", ["tiny-random-llama", "tiny-random-t5"])
def test_lfpt5_end_to_end_pseudo_rate_and_resume(tmp_path, monkeypatch, model):
    def make_config(where):
        return tiny_config(where, method="lfpt5", model=model, tasks=TWO_TASKS,
                           method_options={"lfpt5": {"pseudo_fraction": 0.5, "generator_max_tokens": 24}})

    trained_on = []  # per phase: (task index, input) of every example the loop encoded for training
    original_train, original_encode = loop.ContinualRunner.train_phase, Collator.encode_train

    def train_phase(self, phase):
        trained_on.append([])
        return original_train(self, phase)

    def encode_train(self, task, example, task_index):
        trained_on[-1].append((task_index, example.input, example.target))
        return original_encode(self, task, example, task_index)

    backbone = load_backbone(model, seed=3)
    base = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop.ContinualRunner, "train_phase", train_phase)
        patch.setattr(Collator, "encode_train", encode_train)
        reference = run(make_config(tmp_path / "a"), backbone=backbone)
    after = dict(backbone.model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in base.items())  # the backbone never moved
    out = tmp_path / "a" / "run"
    state = json.loads((out / "checkpoints" / "phase_00" / "method_state.json").read_text())
    pseudo = state["pseudo"]["0"]
    assert all(p["input"].strip() for p in pseudo)
    if model == "tiny-random-llama":  # the random T5's greedy answers decode to "": such samples are dropped
        assert len(pseudo) == 4 and all(p["output"].strip() for p in pseudo)  # 0.5 * 8 training examples
    own = [(0, e.input, e.target) for e in load_stream_for(make_config(tmp_path / "a")).tasks[0].train]
    assert trained_on[0] == own  # task 1: its own data only
    replayed = [row for row in trained_on[1] if row[0] == 0]
    assert sorted(replayed) == sorted((0, p["input"], p["output"]) for p in pseudo)
    assert len(trained_on[1]) == 8 + len(pseudo)
    first = checkpoint_tensors(out, 0)
    second = checkpoint_tensors(out, 1)
    assert set(second) == {"lfpt5_prompt.prompts.0"} and not torch.equal(first["lfpt5_prompt.prompts.0"],
                                                                          second["lfpt5_prompt.prompts.0"])

    resumed = _resume_matches(tmp_path, monkeypatch, make_config, reference)
    resumed_second = checkpoint_tensors(resumed, 1)
    assert torch.equal(resumed_second["lfpt5_prompt.prompts.0"], second["lfpt5_prompt.prompts.0"])
    resumed_state = json.loads((resumed / "checkpoints" / "phase_00" / "method_state.json").read_text())
    assert resumed_state == state
