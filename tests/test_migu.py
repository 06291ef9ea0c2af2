"""MIGU: the exact gradient mask (which rows, how many), padding invariance, the LoRA A/B rule, composition."""
import json
import math

import pytest
import torch

from continual_lm.config import LoRAConfig
from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import build_method
from continual_lm.methods.migu import default_threshold, smallest_units
from continual_lm.methods.registry import METHODS
from continual_lm.models.backbone import load_backbone
from continual_lm.models.inject import find_lora_banks

from helpers import tiny_config
from test_methods_core import _run_with


def _setup(tmp_path, spec, model="tiny-random-llama", **kw):
    """The model and the composed method after setup/before_task, as the loop calls them; method.migu = the plugin."""
    backbone = load_backbone(model, seed=3)
    method = build_method(tiny_config(tmp_path, spec, model=model, **kw))
    method.setup(backbone.model, backbone)
    method.before_task(backbone.model, 0, None)
    method.migu = method.parts[-1]
    backbone.model.train()
    return backbone.model, method


def _batch(lengths, extra_padding=0, prompt=3, seed=0):
    """Right-padded causal-LM batch: tokens random, labels on all but the first `prompt` tokens."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + extra_padding
    ids = torch.full((len(lengths), width), 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, 200, (n,), generator=g)
        mask[row, :n] = 1
        labels[row, prompt:n] = ids[row, prompt:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _masked_mean_distribution(output, token_mask):
    magnitude = output.abs()
    return (magnitude / magnitude.sum(-1, keepdim=True))[token_mask.bool()].mean(0)


def _step(model, method, batch):
    method.before_forward(model, batch)
    method.forward(model, batch).loss.backward()
    method.after_backward(model)


def _zero_rows(grad):
    return set((grad == 0).all(dim=1).nonzero().flatten().tolist())


def _smallest(values, k):
    return set(values.argsort()[:k].tolist())


def test_full_ft_masks_exactly_the_smallest_rows_and_they_do_not_move(tmp_path):
    model, method = _setup(tmp_path, "seqft+migu")
    name = "model.layers.0.mlp.up_proj"
    layer = model.get_submodule(name)
    captured = []
    layer.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    batch = _batch([11, 7, 9])
    _step(model, method, batch)

    d_out = layer.out_features
    k = math.floor(0.7 * d_out)
    expected = _smallest(_masked_mean_distribution(captured[0], batch["attention_mask"]), k)
    assert _zero_rows(layer.weight.grad) == expected and len(expected) == k
    # every block linear is masked the same way; embeddings and the LM head are not touched
    assert set(method.migu.targets) == {n for n, m in model.named_modules()
                                   if isinstance(m, torch.nn.Linear) and ".layers." in n}
    for target in method.migu.targets.values():
        assert len(_zero_rows(target.weight.grad)) == math.floor(0.7 * target.out_features)
    assert not _zero_rows(model.lm_head.weight.grad)

    before = layer.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    optimizer.step()
    method.after_optimizer_step(model, optimizer)  # weight decay alone would move every row
    unchanged = set((layer.weight == before).all(dim=1).nonzero().flatten().tolist())
    assert unchanged == expected


def _stats_after_forward(model, method, batch):
    method.migu.stats.reset()
    method.before_forward(model, batch)
    with torch.no_grad():
        method.forward(model, batch)
    stats = {k: v.clone() for k, v in method.migu.stats.output.items()}
    method.migu.stats.reset()
    return stats


@pytest.mark.parametrize("model_name", ["tiny-random-llama", "tiny-random-t5"])
def test_padding_tokens_do_not_change_the_mask(tmp_path, model_name):
    model, method = _setup(tmp_path, "seqft+migu", model=model_name)
    model.eval()  # no dropout (T5), so the two forwards are comparable; hooks must still see training mode
    for m in method.migu.targets.values():
        m.train()
    tight, padded = _batch([12, 8, 10]), _batch([12, 8, 10], extra_padding=9)
    if model_name == "tiny-random-t5":  # decoder targets: shorter than the encoder input, padded with -100
        for b, extra in ((tight, 0), (padded, 5)):
            b["labels"] = torch.cat([b["input_ids"][:, :4], torch.full((3, extra), -100)], dim=1)
    a, b = _stats_after_forward(model, method, tight), _stats_after_forward(model, method, padded)
    assert a.keys() == b.keys() == set(method.migu.targets)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
        k = math.floor(0.7 * a[name].numel())
        assert _smallest(a[name], k) == _smallest(b[name], k), name
    # the check can fail: counting the padding tokens does change the statistics
    unmasked = dict(padded, attention_mask=torch.ones_like(padded["attention_mask"]), labels=None)
    if model_name == "tiny-random-llama":
        c = _stats_after_forward(model, method, unmasked)
        assert any(not torch.allclose(a[n], c[n], rtol=1e-4, atol=1e-6) for n in a)


def _lora_setup_with_values(tmp_path, spec="seqlora+migu"):
    model, method = _setup(tmp_path, spec, lora=LoRAConfig(r=8, dropout=0.0))
    with torch.no_grad():  # B starts at zero (A would get no gradient, x_B = 0): give every B values
        for bank in find_lora_banks(model).values():
            for B in bank.lora_B:
                B.normal_(0, 0.1)
    return model, method


def test_lora_masks_A_by_xA_and_B_by_its_own_output_xB(tmp_path):
    """Paper §3.2: rows of A by x_A = A x, rows of B by x_B = B A x, "rather than the output of h" = W0 x + s B A x."""
    model, method = _lora_setup_with_values(tmp_path)
    name, bank = next(iter(find_lora_banks(model).items()))
    assert set(method.migu.targets) == set(find_lora_banks(model))
    seen = {}
    bank.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), out=o.detach()))
    batch = _batch([10, 6, 13])
    _step(model, method, batch)

    mask = batch["attention_mask"]
    A, B = bank.lora_A[0], bank.lora_B[0]
    x_a = seen["x"] @ A.detach().T
    x_b = x_a @ B.detach().T
    d_out = bank.out_features
    expected_a = _smallest(_masked_mean_distribution(x_a, mask), math.floor(0.7 * bank.r))
    expected_b = _smallest(_masked_mean_distribution(x_b, mask), math.floor(0.7 * d_out))
    assert _zero_rows(A.grad) == expected_a
    assert _zero_rows(B.grad) == expected_b
    by_h = _smallest(_masked_mean_distribution(seen["out"], mask), math.floor(0.7 * d_out))
    assert by_h != expected_b  # the adapted layer's output h would give another mask: the rule matters
    assert bank.base.weight.grad is None


def test_a_new_lora_with_B_zero_updates_every_row_of_B_in_its_first_step(tmp_path):
    """B = 0 gives x_B = 0 for every token: all d_out magnitudes tie, nothing can be ranked, no row of B is masked
    (the reference's activation >= quantile keeps every tied unit too). A is still ranked by x_A."""
    model, method = _setup(tmp_path, "seqlora+migu", lora=LoRAConfig(r=8, dropout=0.0))
    bank = next(iter(find_lora_banks(model).values()))
    assert not bank.lora_B[0].any()
    _step(model, method, _batch([10, 6, 13]))
    assert bank.lora_B[0].grad.abs().sum() > 0 and not _zero_rows(bank.lora_B[0].grad)


def test_ties_are_broken_by_unit_index_and_a_full_tie_masks_nothing():
    assert smallest_units(torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 5.0]), 0.5).tolist() == [1, 3, 4]
    assert smallest_units(torch.tensor([2.0, 1.0, 1.0, 1.0]), 0.5).tolist() == [1, 2]  # not 3: by index
    assert smallest_units(torch.zeros(8), 0.7).numel() == 0  # x_B = 0 (B = 0): nothing can be ranked
    assert smallest_units(torch.arange(10.0), 0.7).tolist() == list(range(7))  # floor(0.7 * 10) = 7


def test_inclora_ranks_the_trained_B_by_its_own_xB_not_by_the_frozen_loras(tmp_path):
    model, method = _setup(tmp_path, "inclora+migu", lora=LoRAConfig(r=8, dropout=0.0))
    method.before_task(model, 1, None)  # a second LoRA; the first is frozen
    name, bank = next(iter(find_lora_banks(model).items()))
    assert bank.num_loras == 2 and not bank.lora_B[0].requires_grad and bank.lora_B[1].requires_grad
    with torch.no_grad():
        for b in find_lora_banks(model).values():
            b.lora_B[0].normal_(0, 0.5)  # a large frozen LoRA dominates the LoRA sum
            b.lora_B[1].normal_(0, 0.01)
    seen = {}
    bank.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach()))
    batch = _batch([10, 6, 13])
    _step(model, method, batch)

    mask, k = batch["attention_mask"], math.floor(0.7 * bank.out_features)
    x_b = [seen["x"] @ bank.lora_A[i].detach().T @ bank.lora_B[i].detach().T for i in (0, 1)]
    own = _smallest(_masked_mean_distribution(x_b[1], mask), k)
    assert _zero_rows(bank.lora_B[1].grad) == own
    assert _smallest(_masked_mean_distribution(x_b[0] + x_b[1], mask), k) != own  # the LoRA sum would differ
    assert bank.lora_A[0].grad is None and bank.lora_B[0].grad is None


class StepRecorder:
    """Spies on MIGU in the real loop: after each after_backward, the trained LoRA matrices and their zeroed gradient
    rows (the mask); at the next before_forward (or the end of the phase), which of their rows changed in the step."""

    def __init__(self, monkeypatch):
        from continual_lm.methods.migu import MIGU

        self.steps, self.pending = [], None
        original_backward, original_forward, original_after_task = MIGU.after_backward, MIGU.before_forward, \
            MIGU.after_task

        def after_backward(migu, model):
            original_backward(migu, model)
            self.pending = {n: (p, p.detach().clone(), (p.grad == 0).all(dim=1)) for n, p in model.named_parameters()
                            if p.grad is not None and "lora_" in n}

        def close(*args):
            if self.pending is not None:
                self.steps.append({n: (masked, (p.detach() != before).any(dim=1))
                                   for n, (p, before, masked) in self.pending.items()})
                self.pending = None

        monkeypatch.setattr(MIGU, "after_backward", after_backward)
        monkeypatch.setattr(MIGU, "before_forward",
                            lambda migu, model, batch: (close(), original_forward(migu, model, batch)))
        monkeypatch.setattr(MIGU, "after_task", lambda migu, *a: (close(), original_after_task(migu, *a)))


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_masked_rows_do_not_move_in_their_step_under_update_masking(tmp_path, monkeypatch, mode):
    """Paper §3.1: W <- W - lr (M * grad W). With AdamW (the loop's optimizer) zeroing the gradient rows is not enough:
    the moments keep moving the masked rows. --migu-mask update (default): the fraction of rows changed per step is
    exactly the unmasked fraction; --migu-mask gradient (the old behaviour) lets masked rows move."""
    recorder = StepRecorder(monkeypatch)
    options = {} if mode == "update" else {"migu": {"mask": "gradient"}}
    _run_with(tmp_path, "seqlora+migu", method_options=options)
    assert len(recorder.steps) >= 6
    moved_masked = 0
    for step in recorder.steps[1:]:  # step 0: B = 0, every row of B is updated (the tie rule)
        for name, (masked, changed) in step.items():
            if ".lora_B." in name:
                assert int(masked.sum()) == math.floor(0.7 * masked.numel()), name
                assert changed[~masked].all(), name  # every unmasked row takes its AdamW step
            moved_masked += int((changed & masked).sum())
    if mode == "update":
        assert moved_masked == 0
        for step in recorder.steps[1:]:  # the fraction of B rows changed per step = the unmasked fraction 1 - T
            for name, (masked, changed) in step.items():
                if ".lora_B." in name:
                    n = changed.numel()
                    assert int(changed.sum()) == n - math.floor(0.7 * n), name
    else:
        assert moved_masked > 0  # the AdamW moments moved masked rows


@pytest.mark.parametrize("optimizer", ["AdamW", "SGD", "RMSprop"])
def test_update_masking_keeps_the_masked_rows_of_parameters_and_optimizer_state(tmp_path, optimizer):
    """Any torch optimizer: in a step, a masked row keeps its value and its rows of every optimizer state tensor of
    the parameter's shape (AdamW's exp_avg/exp_avg_sq, SGD's momentum buffer, RMSprop's square_avg)."""
    model, method = _lora_setup_with_values(tmp_path)
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"SGD": dict(momentum=0.9), "AdamW": dict(weight_decay=0.1)}.get(optimizer, {})
    opt = getattr(torch.optim, optimizer)(params, lr=1e-2, **kwargs)
    bank = next(iter(find_lora_banks(model).values()))
    B = bank.lora_B[0]
    for step in range(3):
        _step(model, method, _batch([10, 6, 13], seed=step))
        masked = (B.grad == 0).all(dim=1)
        before = B.detach().clone()
        state_before = {k: v.clone() for k, v in opt.state[B].items() if torch.is_tensor(v) and v.shape == B.shape}
        opt.step()
        method.after_optimizer_step(model, opt)
        opt.zero_grad(set_to_none=True)
        assert int(masked.sum()) == math.floor(0.7 * B.shape[0])
        changed = (B.detach() != before).any(dim=1)
        assert not changed[masked].any() and changed[~masked].all()
        for key, value in state_before.items():  # from the second step on the state exists before the step
            assert torch.equal(opt.state[B][key][masked], value[masked]), key
            assert not torch.equal(opt.state[B][key][~masked], value[~masked]), key
        assert step == 0 or state_before


def test_inclora_with_migu_keeps_frozen_loras_and_the_base_fixed(tmp_path):
    backbone, base, snaps, results = _run_with(tmp_path, "inclora+migu")
    T = len(results["tasks"])
    params = dict(backbone.model.named_parameters())
    for name, value in base.items():
        key = name.replace("q_proj.weight", "q_proj.base.weight").replace("v_proj.weight", "v_proj.base.weight")
        assert torch.equal(params[key], value), key
    for t in range(T - 1):
        keys = [k for k in snaps[t] if f"lora_A.{t}" in k or f"lora_B.{t}" in k]
        assert keys and all(torch.equal(snaps[-1][k], snaps[t][k]) for k in keys)
    assert all(snaps[-1][k].abs().sum() > 0 for k in snaps[-1] if f"lora_B.{T - 1}" in k)  # the last one trained


def test_threshold_zero_equals_the_plain_method(tmp_path):
    _, _, plain, plain_results = _run_with(tmp_path / "plain", "seqlora")
    _, _, zero, zero_results = _run_with(tmp_path / "zero", "seqlora+migu", method_options={"migu": {"threshold": 0.0}})
    _, _, masked, _ = _run_with(tmp_path / "masked", "seqlora+migu")
    assert zero_results["matrix"] == plain_results["matrix"]
    assert all(torch.equal(zero[-1][k], plain[-1][k]) for k in plain[-1])
    assert any(not torch.equal(masked[-1][k], plain[-1][k]) for k in plain[-1])  # T=0.7 does change training


def test_threshold_defaults_per_composition_and_option_errors(tmp_path):
    assert [default_threshold(f"{base}+migu") for base in ("seqft", "seqlora", "inclora")] == [0.7, 0.7, 0.7]
    assert default_threshold("seqlora+replay+migu") == 0.4
    assert default_threshold("olora+migu") == default_threshold("olora+replay+migu") == 0.1
    assert build_method(tiny_config(tmp_path, "inclora+migu")).parts[1].threshold == 0.7
    given = build_method(tiny_config(tmp_path, "inclora+migu", method_options={"migu": {"threshold": 0.3}}))
    assert given.parts[1].threshold == 0.3
    with pytest.raises(ContinualLMError, match="--migu-threshold"):
        build_method(tiny_config(tmp_path, "seqlora+migu", method_options={"migu": {"threshold": 1.5}}))
    with pytest.raises(ContinualLMError, match="--migu-modules"):
        _setup(tmp_path, "seqft+migu", method_options={"migu": {"modules": "nothing_like_this"}})
    assert build_method(tiny_config(tmp_path, "seqlora+migu")).parts[1].options.mask == "update"
    with pytest.raises(ContinualLMError, match="--migu-mask: expected one of update, gradient, got 'grad'"):
        build_method(tiny_config(tmp_path, "seqlora+migu", method_options={"migu": {"mask": "grad"}}))


def test_modules_option_restricts_the_masked_layers(tmp_path):
    model, method = _setup(tmp_path, "seqft+migu", method_options={"migu": {"modules": "down_proj,re:.*\\.o_proj"}})
    assert sorted(n.rsplit(".", 1)[-1] for n in method.migu.targets) == ["down_proj", "down_proj", "o_proj", "o_proj"]
    _step(model, method, _batch([9, 5]))
    assert _zero_rows(model.get_submodule("model.layers.1.mlp.down_proj").weight.grad)
    assert not _zero_rows(model.get_submodule("model.layers.1.mlp.up_proj").weight.grad)


@pytest.mark.parametrize("spec,threshold", [("olora+migu", 0.1), ("seqlora+replay+migu", 0.4)])
def test_compositions_with_olora_and_replay(tmp_path, spec, threshold):
    missing = [p for p in spec.split("+") if p not in METHODS]
    if missing:
        pytest.skip(f"method(s) {', '.join(missing)} not registered yet (added by another issue)")
    backbone, base, snaps, results = _run_with(tmp_path, spec)
    method = build_method(tiny_config(tmp_path, spec))
    assert method.parts[-1].threshold == threshold
    assert results["method"] == spec and len(snaps) == len(results["tasks"])
    if spec.startswith("olora"):  # earlier LoRAs stay frozen under the mask too
        keys = [k for k in snaps[0] if "lora_A.0" in k or "lora_B.0" in k]
        assert keys and all(torch.equal(snaps[-1][k], snaps[0][k]) for k in keys)


def test_overlap_analysis_writes_a_heatmap_and_matrix(tmp_path):
    from continual_lm.analysis import run_analysis

    _run_with(tmp_path, "seqlora+migu")
    run_dir = tmp_path / "run"
    out = tmp_path / "fig" / "overlap_heatmap.png"
    assert run_analysis("migu-overlap", [str(run_dir), "--samples", "4", "--output", str(out)]) == 0
    assert out.stat().st_size > 0
    record = json.loads(out.with_suffix(".json").read_text())
    m = record["overlap"]
    T = len(record["tasks"])
    assert len(m) == T and all(m[i][i] == 1.0 for i in range(T))
    assert all(m[i][j] == m[j][i] and 0 <= m[i][j] <= 1 for i in range(T) for j in range(T))
    assert record["threshold"] == 0.7 and record["layer"].endswith(("q_proj", "v_proj"))
    with pytest.raises(ContinualLMError, match="--layer"):
        run_analysis("migu-overlap", [str(run_dir), "--layer", "model.embed_tokens"])
