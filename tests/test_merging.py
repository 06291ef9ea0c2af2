"""Model-merging baselines (methods/merging.py): each rule equals a hand merge; a run evaluates base + merged delta."""
import pytest
import torch

import continual_lm
from continual_lm.api import export_run, merge_run
from continual_lm.errors import ContinualLMError
from continual_lm.methods import merging
from continual_lm.methods.base import Method
from continual_lm.methods.registry import method_class, split_method_spec
from continual_lm.models.backbone import load_backbone
from continual_lm import run

from helpers import PhaseRecorder, run_crashed_in_first_evaluation_then_resumed, tiny_config

TASKS = ["sentiment", "animal_class", "reverse"]

# three task vectors of five entries; the top 40 % (2 entries) of each by magnitude survive TIES' trim
T1, T2, T3 = [3.0, -1.0, 0.5, 2.0, -4.0], [-2.0, 2.0, 0.1, 1.0, -1.0], [1.0, -3.0, -0.2, -5.0, 0.3]


def test_task_arithmetic_is_lambda_times_the_sum():
    deltas = [torch.randn(4, 3) for _ in range(3)]
    assert torch.allclose(merging.task_arithmetic(deltas, 0.4), 0.4 * (deltas[0] + deltas[1] + deltas[2]))


def test_ties_equals_a_hand_merge_with_the_trim_over_the_whole_task_vector():
    # Each task vector is two weight matrices (its first 2 and last 3 entries); the trim keeps its top 2 of 5:
    #   t1 -> [3, 0, 0, 0, -4], t2 -> [-2, 2, 0, 0, 0], t3 -> [0, -3, 0, -5, 0]
    # elected signs (of the sums 1, -1, 0, -5, -4): +, -, + (a zero sum counts as +), -, -
    # mean of the agreeing non-zero entries: [3, -3, 0, -5, -4]
    vectors = [[torch.tensor(t[:2]), torch.tensor(t[2:])] for t in (T1, T2, T3)]
    thresholds = merging.trim_thresholds(vectors, density=0.4)
    assert thresholds == [3.0, 2.0, 3.0]
    merged = [merging.ties([v[piece] for v in vectors], 0.5, 0.4, "total", thresholds) for piece in (0, 1)]
    assert torch.equal(torch.cat(merged), 0.5 * torch.tensor([3.0, -3.0, 0.0, -5.0, -4.0]))
    # per weight matrix (peft's ties): the first matrix keeps int(0.4 * 2) = 0 entries of each task, so it merges to 0
    per_tensor = merging.ties([v[0] for v in vectors], 1.0, 0.4, "total")
    assert torch.equal(per_tensor, torch.zeros(2))


def test_ties_frequency_sign_counts_votes_not_mass():
    # trimmed to everything (density 1): entry 0 has values 5, -1, -1: the mass elects +, the vote elects -
    deltas = [torch.tensor([5.0]), torch.tensor([-1.0]), torch.tensor([-1.0])]
    assert merging.ties(deltas, 1.0, 1.0, "total", [0.0] * 3).item() == 5.0
    assert merging.ties(deltas, 1.0, 1.0, "frequency", [0.0] * 3).item() == -1.0


def test_dare_drops_and_rescales_and_is_seeded():
    deltas = [torch.randn(40, 30) for _ in range(3)]
    assert torch.allclose(merging.dare(deltas, 0.5, 0.0), merging.task_arithmetic(deltas, 0.5))
    torch.manual_seed(7)
    masks = [torch.bernoulli(torch.full_like(d, 0.2)) for d in deltas]  # what peft draws, in order, after the seed
    hand = sum(0.5 * d * m / 0.2 for d, m in zip(deltas, masks))
    merged = merging.dare(deltas, 0.5, 0.8, seed=7)
    assert torch.allclose(merged, hand)
    single = merging.dare(deltas[:1], 1.0, 0.8, seed=3)  # one task: every entry dropped or rescaled by 1/(1-p)
    kept = single != 0
    assert torch.allclose(single[kept], deltas[0][kept] / 0.2) and 0.1 < kept.float().mean() < 0.3
    assert torch.equal(merging.dare(deltas, 0.5, 0.8, seed=7), merged)
    assert not torch.equal(merging.dare(deltas, 0.5, 0.8, seed=8), merged)


def test_max_magnitude_keeps_the_signed_entry_of_largest_size():
    running = None
    for t in (T1, T2, T3):
        running = merging.max_magnitude(running, torch.tensor(t))
    assert torch.equal(running, torch.tensor([3.0, -3.0, 0.5, -5.0, -4.0]))


def test_protocol_and_composition():
    for name in ("merge-ta", "merge-ties", "merge-dare", "magmax"):
        cls = method_class(name)
        assert cls.uses_task_id_at_train and not cls.uses_task_id_at_test
        assert not getattr(cls, "uses_replay", False) and not getattr(cls, "uses_pseudo_samples", False)
    assert split_method_spec("merge-ties+replay+migu") == ["merge-ties", "replay", "migu"]
    with pytest.raises(ContinualLMError, match="cannot be combined with ewc"):
        split_method_spec("magmax+ewc")
    with pytest.raises(ContinualLMError, match="--merge-ties-density: expected a number in"):
        method_class("merge-ties")(tiny_config(__import__("pathlib").Path("/tmp"), "merge-ties",
                                               method_options={"merge-ties": {"density": 0}}))


def _run_recording_evaluation(tmp_path, method, **kw):
    """Run ``method`` on three demo tasks; return (backbone, results, parameters after each phase, the LoRA banks'
    weights that generation used in each phase's evaluation)."""
    from continual_lm.models.inject import find_lora_banks

    backbone = load_backbone("tiny-random-llama", seed=3)
    seen = []
    original = Method.generate

    def spy(self, model, batch, max_new_tokens, **generate_kwargs):  # inside the merged view: what decoding uses
        banks = find_lora_banks(model)
        seen.append({n: (b.base.weight.detach().clone(), b.lora_B[0].detach().clone()) for n, b in banks.items()}
                    if banks else {n: p.detach().clone() for n, p in model.named_parameters()})
        return original(self, model, batch, max_new_tokens, **generate_kwargs)

    with pytest.MonkeyPatch.context() as patch:
        recorder = PhaseRecorder()
        patch.setattr(Method, "generate", spy)
        results = run(tiny_config(tmp_path, method, tasks=TASKS, max_test_per_task=2, **kw), backbone=backbone,
                      callbacks=[recorder])
    return backbone, results, recorder.records, seen


def test_merge_ta_run_evaluates_base_plus_the_mean_of_the_independent_task_deltas(tmp_path, monkeypatch):
    at_start = []  # independent training: every task's LoRA starts from the same initial LoRA
    monkeypatch.setattr(merging.TaskArithmetic, "before_task", lambda self, model, i, task: at_start.append(
        {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}))
    backbone, results, snaps, seen = _run_recording_evaluation(tmp_path, "merge-ta", lr=2e-2)
    assert len(at_start) == len(TASKS) and all(torch.equal(s[k], at_start[0][k]) for s in at_start for k in s)
    scaling = 32.0 / 8
    bank = "model.layers.0.self_attn.q_proj"
    W0 = snaps[0][f"{bank}.base.weight"]
    deltas = [scaling * s[f"{bank}.lora_B.0"] @ s[f"{bank}.lora_A.0"] for s in snaps]
    assert all(d.abs().sum() > 0 for d in deltas) and not torch.allclose(deltas[0], deltas[1])
    per_phase = len(seen) // len(snaps)
    for i in range(len(snaps)):
        weight, live_B = seen[i * per_phase][bank]  # the first generation call of phase i's evaluation
        expected = W0 + sum(deltas[: i + 1]) / (i + 1)
        assert torch.allclose(weight, expected, atol=1e-6), i
        assert torch.equal(live_B, torch.zeros_like(live_B))  # the trained LoRA is not added on top
    # after evaluation the model holds its trained state again
    final = dict(backbone.model.named_parameters())
    assert torch.equal(final[f"{bank}.base.weight"], W0)
    assert torch.equal(final[f"{bank}.lora_B.0"], snaps[-1][f"{bank}.lora_B.0"])
    # `continual-lm merge` writes the evaluated model: plain linear layers holding W0 + the merged delta
    from safetensors.torch import load_file

    merge_run(continual_lm.load_run(tmp_path / "run"), tmp_path / "merged")
    written = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert not any("lora_" in k for k in written)
    assert torch.allclose(written[f"{bank}.weight"], W0 + sum(deltas) / len(deltas), atol=1e-6)


def test_magmax_run_evaluates_base_plus_half_the_max_magnitude_vector_and_merges_to_it(tmp_path):
    base = {n: p.detach().clone() for n, p in load_backbone("tiny-random-llama", seed=3).model.named_parameters()}
    backbone, results, snaps, seen = _run_recording_evaluation(tmp_path, "magmax", lr=1e-3)
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(snaps[1][name], snaps[0][name])
    running = None
    per_phase = len(seen) // len(snaps)
    for i, snap in enumerate(snaps):
        tau = snap[name] - base[name]
        running = tau if running is None else torch.where(tau.abs() >= running.abs(), tau, running)
        assert torch.allclose(seen[i * per_phase][name], base[name] + 0.5 * running, atol=1e-7), i
    # sequential: task 1 starts where task 0 ended (not from the base)
    assert not torch.equal(snaps[1][name], base[name])

    loaded = continual_lm.load_run(tmp_path / "run")
    with pytest.raises(ContinualLMError, match="continual-lm merge"):
        export_run(loaded, tmp_path / "exp")
    merge_run(loaded, tmp_path / "merged")
    from safetensors.torch import load_file

    written = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert torch.allclose(written[name], base[name] + 0.5 * running, atol=1e-7)


def test_merge_dare_resumes_to_the_same_results(tmp_path, monkeypatch):
    def config_at(where):
        return tiny_config(where, "merge-dare", tasks=TASKS[:2], lr=2e-2, max_test_per_task=2,
                           method_options={"merge-dare": {"drop_rate": 0.5}})

    whole = run(config_at(tmp_path / "whole"))
    resumed = run_crashed_in_first_evaluation_then_resumed(config_at, tmp_path / "resumed")
    assert resumed["matrix"] == whole["matrix"]
    whole_run, resumed_run = (continual_lm.load_run(tmp_path / d / "run").method for d in ("whole", "resumed"))
    assert whole_run.num_task_vectors == resumed_run.num_task_vectors == 2
    merged = [list(m.merged_weights().values()) for m in (whole_run, resumed_run)]
    assert len(merged[0]) == len(merged[1]) > 0
    assert all(torch.equal(x, y) for x, y in zip(*merged))  # the same task vectors and the same seeded drops


@pytest.mark.parametrize("spec", ["merge-ties+replay+migu", "magmax+replay", "osf+replay"])
def test_compositions_with_plugins_run(tmp_path, spec):
    results = run(tiny_config(tmp_path, spec, tasks=TASKS[:2], max_test_per_task=1, lr=1e-3,
                              method_options={"replay": {"count": 2}}))
    assert results["method"] == spec and results["matrix"][1][0] is not None
    loaded = continual_lm.load_run(tmp_path / "run")
    assert len(loaded.method.parts[1].memory[0]) == 2  # replay stored task 1's samples (mixed into task 2)
