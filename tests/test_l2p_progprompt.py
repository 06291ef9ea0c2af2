"""L2P and Progressive Prompts: key matching, frozen prompts, growing progression, no task id at test time, end to
end on a tiny causal and seq2seq model, resume after a crash."""
import json
from pathlib import Path

import pytest
import torch

from continual_lm.data.tasks import Example
from continual_lm.errors import ContinualLMError
from continual_lm.methods import prompt_method
from continual_lm.methods.base import TrainExample, build_method
from continual_lm.models.backbone import load_backbone
from continual_lm import run

from helpers import (NoTaskIds, run_crashed_in_first_evaluation_then_resumed, tiny_config, set_up_method,
                     checkpoint_tensors)

TWO_TASKS = ["sentiment", "reverse"]
TEXTS = ["a great film", "the cat sat on the mat"]


def built(tmp_path, method, model="tiny-random-llama", tasks=0, **options):
    return set_up_method(tmp_path, method, TWO_TASKS, model, before_tasks=tasks, max_input_length=512, options=options)


def prompt_batch(method, texts=TEXTS):
    return next(method.context.prompt_batches(0, texts, batch_size=len(texts)))


def train_batch(method, texts=TEXTS):
    return next(method.context.train_batches([TrainExample(0, Example(t, "positive")) for t in texts]))


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_options_are_checked():
    def build(method, **options):
        build_method(tiny_config(Path("/tmp"), method=method, method_options={method: options}))

    with pytest.raises(ContinualLMError, match="--l2p-top-k: expected at most --l2p-pool-size \\(3\\), got 4"):
        build("l2p", pool_size=3, top_k=4)
    with pytest.raises(ContinualLMError, match="--l2p-query: expected one of embedding, hidden"):
        build("l2p", query="cls")
    with pytest.raises(ContinualLMError, match="--progprompt-reparam: expected one of none, mlp"):
        build("progprompt", reparam="lstm")
    with pytest.raises(ContinualLMError, match="--progprompt-prompt-length: expected an integer >= 1"):
        build("progprompt", prompt_length=0)


# ---- L2P ---------------------------------------------------------------------------------------------------------
def test_l2p_selects_the_prompt_whose_key_matches_a_planted_query(tmp_path, monkeypatch):
    l2p, backbone = built(tmp_path, "l2p", pool_size=4, top_k=1, prompt_length=3)
    model, pool = backbone.model.eval(), l2p.pool
    assert trainable(model) == {"l2p.keys"} | {f"l2p.bank.prompts.{i}" for i in range(4)}
    batch = prompt_batch(l2p)
    query = l2p.query(model, batch["input_ids"], batch["attention_mask"].bool())
    with torch.no_grad():
        pool.keys[2] = query[0] * 3.0  # cosine 1 with input 0 (scale does not matter)
        pool.keys[0] = query[1]  # ... and with input 1
    indices, cosines = l2p.selection(model, batch["input_ids"], batch["attention_mask"].bool())
    assert indices.tolist() == [[2], [0]] and torch.allclose(cosines, torch.ones(2, 1), atol=1e-5)

    used = []
    monkeypatch.setattr(prompt_method, "prompt_generate", lambda m, ids, mask, prompt, **kw: used.append(prompt) or ids)
    l2p.generate(model, NoTaskIds(batch, task_ids=torch.tensor([1, 1])), 2)  # task ids are never read
    assert torch.equal(used[0][0], pool.bank.prompts[2]) and torch.equal(used[0][1], pool.bank.prompts[0])

    # training: the same selection (the query ignores the answer tokens), surrogate 1 - cos = 0 for planted keys
    outputs = l2p.forward(model, train_batch(l2p))
    assert torch.isfinite(outputs.loss) and l2p.extra_loss(model, None, outputs).abs().item() < 1e-5


def test_l2p_top_k_prompts_are_concatenated_by_similarity_and_only_keys_get_the_surrogate_gradient(tmp_path):
    l2p, backbone = built(tmp_path, "l2p", pool_size=5, top_k=2, prompt_length=3, key_loss_weight=0.5)
    model, pool = backbone.model, l2p.pool
    batch = train_batch(l2p, TEXTS[:1])
    mask = batch["attention_mask"].bool() & (batch["labels"] == -100)
    query = l2p.query(model, batch["input_ids"], mask)[0]
    with torch.no_grad():
        pool.keys.copy_(torch.nn.functional.normalize(torch.randn_like(pool.keys), dim=-1))  # cos ~ +-0.1 in 64-d
        pool.keys[4] = query
        pool.keys[1] = query / query.norm() + 0.5 * pool.keys[1]  # cos ~ 0.9: the second best
    indices, cosines = pool.select(query[None], 2)
    assert indices.tolist() == [[4, 1]] and cosines[0, 0] > cosines[0, 1]
    assert torch.equal(pool.bank.gather(indices)[0], torch.cat([pool.bank.prompts[4], pool.bank.prompts[1]]))

    model.zero_grad(set_to_none=True)
    l2p.forward(model, batch)
    surrogate = l2p.extra_loss(model, batch, None)
    assert torch.isclose(surrogate, 0.5 * (1 - cosines).sum(), atol=1e-5)
    surrogate.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"l2p.keys"}  # the prompts are not on the surrogate's path, nor the backbone
    assert set(pool.keys.grad.abs().sum(-1).nonzero().flatten().tolist()) == {1, 4}  # only the selected keys


@pytest.mark.parametrize("model", ["tiny-random-llama", "tiny-random-t5"])
@pytest.mark.parametrize("query", ["embedding", "hidden"])
def test_l2p_query_is_the_same_at_train_and_test_time(tmp_path, model, query):
    l2p, backbone = built(tmp_path, "l2p", model=model, query=query)
    test, train = prompt_batch(l2p), train_batch(l2p)
    mask = train["attention_mask"].bool()
    if not backbone.is_seq2seq:
        mask = mask & (train["labels"] == -100)
    backbone.model.train()  # the frozen feature has no dropout even while training
    at_train = l2p.query(backbone.model, train["input_ids"], mask)
    at_test = l2p.query(backbone.model, test["input_ids"], test["attention_mask"].bool())
    assert at_train.shape == (2, l2p.pool.bank.hidden_size)
    assert torch.allclose(at_train, at_test, atol=1e-5)


# ---- Progressive Prompts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,options", [("tiny-random-llama", {}),
                                           ("tiny-random-t5", {"reparam": "mlp", "mlp_bottleneck": 8})])
def test_progprompt_input_grows_per_task_newest_prompt_first_and_only_it_trains(tmp_path, monkeypatch, model, options):
    prog, backbone = built(tmp_path, "progprompt", model=model, tasks=1, prompt_length=4, **options)
    model_, prompts = backbone.model.eval(), prog.prompts
    seen = []
    original = model_.generate
    monkeypatch.setattr(model_, "generate", lambda **kw: seen.append(kw["inputs_embeds"]) or original(**kw))
    batch = prompt_batch(prog)
    width = batch["input_ids"].shape[1]
    prog.generate(model_, NoTaskIds(batch, task_ids=torch.tensor([0, 0])), 2)
    prog.before_task(model_, 1, prog.tasks[1])
    prog.generate(model_, NoTaskIds(batch, task_ids=torch.tensor([0, 0])), 2)
    assert [e.shape[1] for e in seen] == [width + 4, width + 8]  # one more prompt per task, for every input
    with torch.no_grad():
        newest, oldest = prompts.prompt(1), prompts.prompt(0)
    assert torch.equal(seen[1][0, :4], newest) and torch.equal(seen[1][0, 4:8], oldest)
    if options:  # reparameterised: P' = P + MLP(P)
        raw = prompts.bank.prompts[1]
        assert torch.allclose(newest, raw + prompts.mlps[1].module(raw)) and not torch.equal(newest, raw)
        assert trainable(model_) == {"progprompt.bank.prompts.1"} | {
            f"progprompt.mlps.1.module.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    else:
        assert torch.equal(newest, prompts.bank.prompts[1]) and trainable(model_) == {"progprompt.bank.prompts.1"}


# ---- end to end through the loop, with resume ---------------------------------------------------------------------
def _config(tmp_path, method, model, options):
    return tiny_config(tmp_path, method=method, model=model, tasks=TWO_TASKS, method_options={method: options})


@pytest.mark.parametrize("method,model,options", [
    ("l2p", "tiny-random-llama", {"pool_size": 4, "top_k": 2, "prompt_length": 3}),
    ("l2p", "tiny-random-t5", {"pool_size": 4, "top_k": 2, "prompt_length": 3, "query": "hidden"}),
    ("progprompt", "tiny-random-llama", {"prompt_length": 4}),
    ("progprompt", "tiny-random-t5", {"prompt_length": 4, "reparam": "mlp", "mlp_bottleneck": 8}),
])
def test_end_to_end_frozen_state_and_resume(tmp_path, monkeypatch, method, model, options):
    backbone = load_backbone(model, seed=3)
    base = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    lengths = []  # prompt tokens given to each test-time generate call (progprompt)
    original_generate = prompt_method.prompt_generate

    def spy(model_, ids, mask, prompt, **kw):
        lengths.append(prompt.shape[0])
        return original_generate(model_, ids, mask, prompt, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prompt_method, "prompt_generate", spy)
        reference = run(_config(tmp_path / "a", method, model, options), backbone=backbone)
    params = dict(backbone.model.named_parameters())
    assert all(torch.equal(params[n], value) for n, value in base.items())  # the backbone never moves

    out = tmp_path / "a" / "run"
    first = checkpoint_tensors(out, 0)
    second = checkpoint_tensors(out, 1)
    assert not set(first) & set(base)  # only method parameters are checkpointed
    if method == "progprompt":
        L = options["prompt_length"]
        assert first and all(torch.equal(first[n], second[n]) for n in first)  # task 1's prompt (and MLP): frozen
        assert {n for n in second if n not in first and ".prompts." in n} == {"progprompt.bank.prompts.1"}
        vocabulary = backbone.model.get_input_embeddings().weight.detach()
        is_row = (second["progprompt.bank.prompts.1"][:, None, :] == vocabulary[None]).all(-1).any(1)
        assert not is_row.all()  # trained away from its initial vocabulary rows
        assert lengths and lengths == sorted(lengths) and set(lengths) == {L, 2 * L}  # grows with the tasks
    else:
        assert set(first) == set(second) == {"l2p.keys"} | {f"l2p.bank.prompts.{i}" for i in range(4)}
        assert not torch.equal(first["l2p.keys"], second["l2p.keys"])  # the keys keep training
        selection = json.loads((out / "l2p_selection.json").read_text())
        assert len(selection["frequency"]) == 2 and all(abs(sum(r) - 2) < 1e-6 for r in selection["frequency"])
        assert "l2p_selection_heatmap.png" in (out / "report.md").read_text()

    resumed = run_crashed_in_first_evaluation_then_resumed(
        lambda where: _config(where, method, model, options), tmp_path / "b")
    assert resumed["matrix"] == reference["matrix"] and resumed["metrics"] == reference["metrics"]
    predictions = "predictions/after_phase_01.json"
    assert (tmp_path / "b" / "run" / predictions).read_text() == (out / predictions).read_text()
    resumed_second = checkpoint_tensors(tmp_path / "b" / "run", 1)
    assert set(resumed_second) == set(second) and all(torch.equal(second[n], resumed_second[n]) for n in second)
