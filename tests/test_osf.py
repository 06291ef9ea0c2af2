"""OSF through peft (methods/osf.py): each task's update lies in the complement of the preserved singular subspace."""
import pytest
import torch

from continual_lm.errors import ContinualLMError
from continual_lm.methods.osf import OSF, preserved_rank
from continual_lm.methods.registry import split_method_spec
from continual_lm.models.backbone import load_backbone
from continual_lm.train.checkpoint import RunDir
from continual_lm import run

from helpers import PhaseRecorder, run_crashed_in_first_evaluation_then_resumed, tiny_config

TASKS = ["sentiment", "animal_class", "reverse"]
TARGETS = [f"model.layers.{i}.{m}.weight" for i in (0, 1)
           for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def _config(where, tasks=TASKS, **options):
    return tiny_config(where, "osf", tasks=tasks, lr=1e-2, max_test_per_task=2, method_options={"osf": options})


def _run(tmp_path, tasks=TASKS, **options):
    backbone = load_backbone("tiny-random-llama", seed=3)
    base = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    recorder = PhaseRecorder()
    results = run(_config(tmp_path, tasks, **options), backbone=backbone, callbacks=[recorder])
    return base, recorder.records, results


def _leak(before: torch.Tensor, after: torch.Tensor, k: int) -> float:
    """|U_high^T dW| + |dW V_high| relative to |dW|, with U_high/V_high the top-k singular vectors of ``before``."""
    U, _, Vh = torch.linalg.svd(before.double())
    delta = (after - before).double()
    return ((U[:, :k].T @ delta).norm() + (delta @ Vh[:k].T).norm()).item() / delta.norm().item()


def test_each_task_updates_only_the_complement_of_the_preserved_directions(tmp_path):
    base, snaps, results = _run(tmp_path)
    assert len(snaps) == 3
    for name in base:  # only the decomposed weights move (peft trains nothing else)
        if name not in TARGETS:
            assert torch.equal(snaps[-1][name], base[name]), name
    previous = base
    for t, snap in enumerate(snaps):
        for name in TARGETS:
            assert not torch.equal(snap[name], previous[name]), (t, name)
            if t == 0:  # nothing preserved yet: the first task trains the weights freely
                assert _leak(previous[name], snap[name], 8) > 0.05
            else:  # task t preserves t/T of the min(out, in) directions of each matrix
                k = preserved_rank(snap[name].shape, t / 3)
                assert k == int(min(snap[name].shape) * t / 3) > 0
                assert _leak(previous[name], snap[name], k) < 1e-4, (t, name)
        previous = snap


def test_peft_gradient_projection_alone_leaks_into_the_preserved_subspace_with_adamw(tmp_path):
    """peft projects the gradients of U_low/V_low; AdamW's per-entry scaling then moves them out of the
    complement, which the per-step parameter projection corrects (the test above)."""
    base, snaps, _ = _run(tmp_path, TASKS[:2], project_params=False)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert _leak(snaps[0][name], snaps[1][name], preserved_rank(snaps[0][name].shape, 1 / 2)) > 1e-2


def test_rank_rules_and_option_errors():
    assert preserved_rank(torch.Size([64, 128]), 0.5) == 32  # of the rank (the paper)
    assert preserved_rank(torch.Size([64, 128]), 0.25, "max-dim") == 32  # of the larger side (the authors' script)
    assert preserved_rank(torch.Size([64, 128]), 0.75, "max-dim") == 63  # clamped: one direction stays trainable
    assert preserved_rank(torch.Size([64, 64]), 0.001) == 1
    assert OSF.uses_task_id_at_train and not OSF.uses_task_id_at_test
    with pytest.raises(ContinualLMError, match="osf cannot be combined with migu"):
        split_method_spec("osf+migu")
    with pytest.raises(ContinualLMError, match="--osf-rank-of: expected one of min-dim, max-dim"):
        OSF(tiny_config(__import__("pathlib").Path("/tmp"), "osf", method_options={"osf": {"rank_of": "x"}}))


def test_osf_resumes_to_the_same_results(tmp_path, monkeypatch):
    def config_at(where):
        return _config(where, TASKS[:2])

    whole = run(config_at(tmp_path / "whole"))
    resumed = run_crashed_in_first_evaluation_then_resumed(config_at, tmp_path / "resumed")
    assert resumed["matrix"] == whole["matrix"]
    (a, _, meta_a), (b, _, meta_b) = (RunDir(tmp_path / d / "run").load_checkpoint(1) for d in ("whole", "resumed"))
    assert sorted(a) == sorted(TARGETS) and meta_a == meta_b  # the merged target weights, nothing of peft's
    assert all(torch.equal(a[k], b[k]) for k in a)
