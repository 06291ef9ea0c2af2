"""AM-LoRA: the selector's maths, the L1 term, what stays frozen, both selector modes, resume, the attention figure."""
import json
import math

import pytest
import torch
from torch import nn

from continual_lm.data.stream import load_stream_for
from continual_lm.errors import ContinualLMError
from continual_lm.methods.amlora import ATTENTION_JSON, AMLoRA, AttentionSelector
from continual_lm.methods.base import build_method
from continual_lm.models.backbone import load_backbone
from continual_lm.models.inject import find_lora_banks
from continual_lm.models.lora_bank import LoRABank
from continual_lm.train import loop
from continual_lm import run

from helpers import PhaseRecorder, load_script, tiny_config

TASKS = ["sentiment", "reverse", "arithmetic"]  # three demo tasks keep the loop tests fast


def small_bank(num_loras=3, seed=0):
    torch.manual_seed(seed)
    bank = LoRABank(nn.Linear(16, 12), r=4, alpha=8, dropout=0.0)
    bank.mixer = AttentionSelector(bank.out_features)
    bank.mixer.add_dense(bank.base.weight)  # the zero LoRA's
    for _ in range(num_loras):
        bank.add_lora()
        bank.mixer.add_dense(bank.base.weight)
    with torch.no_grad():
        for B in bank.lora_B:
            B.normal_(0, 0.5)
    return bank


def test_selector_follows_the_paper_equation_and_the_zero_lora_contributes_nothing():
    bank = small_bank()
    x = torch.randn(2, 5, 16)
    bank.record_weights = True
    mixed = []
    hook = bank.mixer.register_forward_hook(lambda module, args, out: mixed.append(out))
    out = bank(x)
    hook.remove()
    g = bank.mixer.last_distribution
    assert g.shape == (2, 5, 4)
    assert torch.allclose(g.sum(-1), torch.ones(2, 5), atol=1e-6)  # weights sum to 1 per token
    assert torch.equal(mixed[0], g[..., 1:])  # the bank mixes LoRAs 1..n with g_1..g_n

    # the paper, literally: per LoRA output dw_i x, score W_r,i^T (dw_i x), zero LoRA output 0 (score 0)
    outputs = [torch.zeros(2, 5, 12)] + [(x @ A.T @ B.T) * bank.scaling for A, B in zip(bank.lora_A, bank.lora_B)]
    scores = torch.stack([o @ w for o, w in zip(outputs, bank.mixer.dense)], dim=-1)
    expected_g = torch.softmax(scores, dim=-1)
    assert torch.allclose(g, expected_g, atol=1e-5)
    expected = bank.base(x) + sum(expected_g[..., i:i + 1] * o for i, o in enumerate(outputs))
    assert torch.allclose(out, expected, atol=1e-5)

    with torch.no_grad():  # the zero LoRA's dense layer cannot change anything: its input is 0
        bank.mixer.dense[0].mul_(-7.0).add_(3.0)
    assert torch.equal(bank(x), out)
    with torch.no_grad():  # ... while LoRA 1's can
        bank.mixer.dense[1].add_(1.0)
    assert not torch.allclose(bank(x), out)


def _method(tmp_path, **options):
    config = tiny_config(tmp_path, method="amlora", method_options={"amlora": options})
    backbone = load_backbone("tiny-random-llama", seed=3)
    method = build_method(config)
    method.setup(backbone.model, backbone)
    return method, backbone.model


def test_l1_term_reaches_the_selector_gradients(tmp_path):
    method, model = _method(tmp_path, l1=[0.0, 0.25])
    method.before_task(model, 0, None)
    assert method.extra_loss(model, {}, None) is None  # lambda 0 for task 1: no term at all
    method.before_task(model, 1, None)
    dense = method.selector_weights()
    assert len(dense) == 3 * len(method.banks)
    loss = method.extra_loss(model, {}, None)  # the task loss zeroed: only the L1 term
    assert loss.item() == pytest.approx(0.25 * sum(w.abs().sum().item() for w in dense), rel=1e-5)
    loss.backward()
    for w in dense:
        assert torch.equal(w.grad, 0.25 * torch.sign(w.detach()))
    lora_params = [p for bank in method.banks.values() for p in list(bank.lora_A) + list(bank.lora_B)]
    assert all(p.grad is None for p in lora_params)


def test_options_are_validated(tmp_path):
    with pytest.raises(ContinualLMError, match="--amlora-mode"):
        _method(tmp_path, mode="some")
    with pytest.raises(ContinualLMError, match="--amlora-l1"):
        _method(tmp_path, l1=-1.0)
    with pytest.raises(ContinualLMError, match="unknown amlora option 'preset'"):  # gave way to --preset paper
        _method(tmp_path, preset="paper-standard")
    method, _ = _method(tmp_path)
    assert method.l1_lambda(0) == 1e-5 and method.l1_lambda(3) == 1e-5  # the paper's value for orders 1-3
    method = build_method(tiny_config(tmp_path, method="amlora", method_options={"amlora": {"l1": [0.1, 0.2]}}))
    method.tasks = [None] * 3
    backbone = load_backbone("tiny-random-llama", seed=3)
    with pytest.raises(ContinualLMError, match="one per task"):
        method.setup(backbone.model, backbone)


def _train_selector(l1):
    """(mean selector entropy, sum |W_r|) after two short tasks: bench/amlora_l1_entropy.py's measurement."""
    return load_script("bench/amlora_l1_entropy.py").entropy_after_training(l1)


def test_a_large_l1_shrinks_the_selector_and_flattens_its_attention():
    """L1 on W_r (the paper's term) drives the scores W_r,i^T dw_i x to 0: the softmax moves to uniform over
    the zero LoRA and the task LoRAs. The issue expected a *drop* in entropy; the maths gives a rise (see
    docs/methods/amlora.md), so this test pins the real behaviour and fails if the L1 term has no effect."""
    free_entropy, free_norm = _train_selector(0.0)
    sparse_entropy, sparse_norm = _train_selector(1.0)
    assert sparse_norm < 0.25 * free_norm
    assert free_entropy < sparse_entropy <= math.log(3) + 1e-6
    assert math.log(3) - sparse_entropy < 0.5 * (math.log(3) - free_entropy)


# ---- the loop -------------------------------------------------------------------------------------------------
def _run_with_snapshots(tmp_path, **options):
    """Run the loop; every parameter at the start (after before_task) and at the end of each phase's training."""
    backbone = load_backbone("tiny-random-llama", seed=3)
    base = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    starts = []
    original_before = AMLoRA.before_task

    def snapshot(model):
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def spy_before(self, model, task_index, task):
        original_before(self, model, task_index, task)
        starts.append(snapshot(model))

    ends = PhaseRecorder()
    AMLoRA.before_task = spy_before
    try:
        config = tiny_config(tmp_path, method="amlora", tasks=TASKS, method_options={"amlora": options})
        results = run(config, backbone=backbone, callbacks=[ends])
    finally:
        AMLoRA.before_task = original_before
    return backbone, base, (starts, ends.records), results


def _dense(snapshot, i):
    keys = [k for k in snapshot if k.endswith(f"mixer.dense.{i}")]
    assert keys
    return keys


@pytest.fixture(scope="module")
def all_mode_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("amlora_all")
    return tmp_path, *_run_with_snapshots(tmp_path, l1=1e-3, attention_samples=4)


def test_earlier_loras_and_base_stay_bit_identical_and_all_mode_retrains_every_selector(all_mode_run):
    _, backbone, base, (starts, snaps), results = all_mode_run
    T = len(TASKS)
    assert len(snaps) == T and results["tasks"] == TASKS
    banks = find_lora_banks(backbone.model)
    assert banks and all(b.num_loras == T and len(b.mixer.dense) == T + 1 for b in banks.values())
    for name, value in base.items():  # the base never moves
        key = name.replace("q_proj.weight", "q_proj.base.weight").replace("v_proj.weight", "v_proj.base.weight")
        assert torch.equal(snaps[-1][key], value), key
    for t in range(T):
        lora = [k for k in snaps[t] if f"lora_A.{t}" in k or f"lora_B.{t}" in k]
        assert lora and all(snaps[t][k].abs().sum() > 0 for k in lora if "lora_B" in k)  # task t trained LoRA t
        for later in range(t + 1, T):
            assert all(torch.equal(snaps[later][k], snaps[t][k]) for k in lora), f"LoRA {t} moved in task {later}"
    for t in range(1, T):  # `all`: the dense layers of the earlier LoRAs (1..t) keep training in task t
        for i in range(1, t + 1):
            assert all(not torch.equal(snaps[t][k], starts[t][k]) for k in _dense(snaps[t], i)), (t, i)


def test_new_mode_freezes_the_earlier_selector_dense_layers(tmp_path):
    _, _, (starts, snaps), _ = _run_with_snapshots(tmp_path, mode="new", attention_samples=0)
    for t in range(1, len(TASKS)):
        assert all(not torch.equal(snaps[t][k], starts[t][k]) for k in _dense(snaps[t], t + 1))  # the new one trains
        for i in range(t + 1):  # W_r,0..t, from earlier tasks, stay exactly as they were
            assert all(torch.equal(snaps[t][k], starts[t][k]) for k in _dense(snaps[t], i)), (t, i)
            assert all(torch.equal(snaps[t][k], snaps[t - 1][k]) for k in _dense(snaps[t], i)), (t, i)
    assert not (tmp_path / "run" / ATTENTION_JSON).exists()  # attention_samples 0: no recording


def test_attention_json_and_heatmaps_are_written_and_shown_in_the_report(all_mode_run):
    tmp_path, backbone, _, _, _ = all_mode_run
    out = tmp_path / "run"
    record = json.loads((out / ATTENTION_JSON).read_text())
    assert record["loras"] == ["zero", *TASKS] and record["tasks"] == TASKS
    banks = find_lora_banks(backbone.model)
    assert set(record["mean"]) == set(banks)
    for task in TASKS:
        for weights in record["per_task"][task].values():
            assert len(weights) == len(TASKS) + 1 and sum(weights) == pytest.approx(1.0, abs=1e-4)
    report = (out / "report.md").read_text()
    for projection in ("q_proj", "v_proj"):
        png = out / f"amlora_attention_{projection}_heatmap.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.name in report
    # the per-task routing: each input task's weight on each LoRA, the mean over the adapted layers
    from continual_lm.eval.figures import routing_by_task

    rows, loras, matrix = routing_by_task(record)
    assert rows == TASKS and loras == ["zero", *TASKS]
    for task, shares in zip(TASKS, matrix):
        layers = list(record["per_task"][task].values())
        assert shares == pytest.approx([sum(w[i] for w in layers) / len(layers) for i in range(len(loras))])
        assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    assert (out / "amlora_routing_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "amlora_routing_heatmap.png" in report


def test_padding_is_masked_out_of_the_recorded_means(all_mode_run):
    tmp_path, backbone, _, _, _ = all_mode_run
    method = build_method(tiny_config(tmp_path / "again", method="amlora", tasks=TASKS))
    method.banks = find_lora_banks(backbone.model)
    method.options.attention_samples = 2
    calls = []

    class Context:  # one batch: prompt A padded by 3 tokens, prompt B unpadded, and the same prompt A alone
        tasks = load_stream_for(tiny_config(tmp_path, tasks=TASKS[:1])).tasks

        def prompt_batches(self, task_index, texts):
            calls.append(texts)
            ids = torch.randint(4, 260, (2, 7), generator=torch.Generator().manual_seed(1))
            mask = torch.ones_like(ids)
            ids[0, :3], mask[0, :3] = 0, 0  # left padding
            yield {"input_ids": ids, "attention_mask": mask}

    method.context = Context()
    padded = method.record_attention(backbone.model)["per_task"][TASKS[0]]
    tokens = {}
    for name, bank in method.banks.items():  # reference: the 4 + 7 real tokens only, computed directly
        bank.record_weights = True
    batch = next(Context().prompt_batches(0, []))
    backbone.model.eval()
    with torch.no_grad():
        backbone.model(**batch)
    for name, bank in method.banks.items():
        g = bank.mixer.last_distribution
        tokens[name] = torch.cat([g[0, 3:], g[1]]).mean(0)
        bank.record_weights = False
    assert calls[0] == [e.input for e in Context.tasks[0].test[:2]]
    for name, weights in padded.items():
        assert torch.allclose(torch.tensor(weights), tokens[name], atol=1e-5)


def test_routing_is_recorded_after_each_task_for_every_seen_task(all_mode_run):
    tmp_path, _, _, _, results = all_mode_run
    routing = json.loads((tmp_path / "run" / ATTENTION_JSON).read_text())["routing"]
    assert routing["groups"] == ["all", "q_proj", "v_proj"] and routing["samples_per_task"] == 4
    assert [entry["after"] for entry in routing["after_task"]] == TASKS
    for t, entry in enumerate(routing["after_task"]):
        assert list(entry["tasks"]) == TASKS[:t + 1]  # the tasks seen so far, each against its own LoRA
        for summary in entry["tasks"].values():
            for group in routing["groups"]:
                values = summary[group]
                assert 0 <= values["share"] <= 1 and -1 <= values["margin"] <= 1 and values["n"] == 4
                assert values["top1"] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_recording_the_routing_does_not_change_the_run(tmp_path, all_mode_run):
    """The records run in eval mode without gradients or random numbers: the same run without them trains and
    scores exactly alike."""
    _, _, _, (_, recorded_ends), recorded = all_mode_run
    _, _, (_, ends), results = _run_with_snapshots(tmp_path, l1=1e-3, attention_samples=0)
    assert results["matrix"] == recorded["matrix"]
    assert all(torch.equal(ends[-1][name], recorded_ends[-1][name]) for name in ends[-1])
    assert not (tmp_path / "run" / ATTENTION_JSON).exists()


def test_routing_averages_each_input_over_its_tokens_then_over_the_layers(all_mode_run):
    """Two inputs of the second task, the first left-padded by 3 tokens: per input the selector weights of every
    bank averaged over its real tokens, then over the banks of a group; share = the weight of LoRA 2 (task 2's,
    index 0 being the zero LoRA), margin = share - the largest other weight, top1 = argmax is LoRA 2."""
    tmp_path, backbone, _, _, _ = all_mode_run
    method = build_method(tiny_config(tmp_path / "again", method="amlora", tasks=TASKS))
    method.banks = find_lora_banks(backbone.model)
    method.options.attention_samples = 2
    ids = torch.randint(4, 260, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0

    class Context:
        tasks = load_stream_for(tiny_config(tmp_path, tasks=TASKS)).tasks

        def prompt_batches(self, task_index, texts):
            yield {"input_ids": ids, "attention_mask": mask}

    method.context = Context()
    recorded = method.record_routing(backbone.model, 1)
    assert recorded["after"] == TASKS[1] and list(recorded["tasks"]) == TASKS[:2]
    for bank in method.banks.values():
        bank.record_weights = True
    backbone.model.eval()
    with torch.no_grad():
        backbone.model(input_ids=ids, attention_mask=mask)
    per_bank = {}
    for name, bank in method.banks.items():
        g = bank.mixer.last_distribution.float()
        per_bank[name] = torch.stack([g[0, 3:].mean(0), g[1].mean(0)])  # [inputs, LoRAs]
        bank.record_weights = False
    for group in ("all", "v_proj"):
        names = [n for n in per_bank if group == "all" or n.endswith(group)]
        w = torch.stack([per_bank[n] for n in names]).mean(0)
        others = torch.cat([w[:, :2], w[:, 3:]], dim=1)
        expected = {"share": w[:, 2].mean(), "margin": (w[:, 2] - others.max(1).values).mean(),
                    "top1": (w.argmax(1) == 2).float().mean()}
        for key, value in expected.items():
            assert recorded["tasks"][TASKS[1]][group][key] == pytest.approx(value.item(), abs=2e-6), (group, key)


def test_a_crashed_amlora_run_resumes_to_the_same_results(tmp_path, all_mode_run, monkeypatch):
    reference_dir, _, _, _, reference = all_mode_run
    original_save = loop.RunDir.save_checkpoint

    def crashing_save(self, row, *args):
        path = original_save(self, row, *args)
        if row == 1:
            raise RuntimeError("simulated crash")
        return path

    monkeypatch.setattr(loop.RunDir, "save_checkpoint", crashing_save)
    config = tiny_config(tmp_path, method="amlora", tasks=TASKS,
                         method_options={"amlora": {"l1": 1e-3, "attention_samples": 4}})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config)
    monkeypatch.undo()
    resumed = run(config, output_dir=tmp_path / "run", resume=True)
    assert resumed["matrix"] == reference["matrix"] and resumed["metrics"] == reference["metrics"]
    # the attention record depends on every final weight, the selectors' included
    assert (json.loads((tmp_path / "run" / ATTENTION_JSON).read_text())
            == json.loads((reference_dir / "run" / ATTENTION_JSON).read_text()))


def test_the_last_routing_record_gives_figure_4_from_the_same_forwards(all_mode_run):
    """After the last task, record_routing also takes Figure 4's record (read at the end of the run) from its own
    forwards: equal to record_attention's separate pass over the same inputs, with half the forwards."""
    tmp_path, backbone, _, _, _ = all_mode_run
    method = build_method(tiny_config(tmp_path / "again", method="amlora", tasks=TASKS))
    method.banks = find_lora_banks(backbone.model)
    method.options.attention_samples = 2
    calls = []

    class Context:
        tasks = load_stream_for(tiny_config(tmp_path, tasks=TASKS)).tasks

        def prompt_batches(self, task_index, texts):
            calls.append(task_index)
            ids = torch.randint(4, 260, (2, 7), generator=torch.Generator().manual_seed(task_index))
            mask = torch.ones_like(ids)
            ids[0, :2], mask[0, :2] = 0, 0
            yield {"input_ids": ids, "attention_mask": mask}

    method.context = Context()
    method._final_attention = None
    method.record_routing(backbone.model, len(TASKS) - 2)
    assert method._final_attention is None  # not the last task: nothing taken for the end of the run
    calls.clear()
    method.record_routing(backbone.model, len(TASKS) - 1)
    assert calls == list(range(len(TASKS)))  # one pass over every task
    separate = method.record_attention(backbone.model)
    assert method._final_attention == separate and separate["mean"]
