"""--eval-every K / --eval-final-only: the skipped rows stay null, metrics that need them are null with the reason,
training is unchanged (the final row equals the fully evaluated run's) and a resumed run ends the same; final
scores follow from the schedule (the single-task reference's diagonal), not from a method name."""
import json

import pytest
import torch

from continual_lm import run
from continual_lm.errors import ContinualLMError
from continual_lm.eval.cl_metrics import metrics_without_cells
from continual_lm.eval.results import evaluated_phases, final_scores, trains_each_task_alone
from continual_lm.methods.base import Phase

from helpers import Crash, CrashAt, checkpoint_tensors, tiny_config

TASKS = ["sentiment", "animal_class", "reverse"]


def test_which_phases_are_evaluated():
    assert evaluated_phases(5, every=2) == [False, True, False, True, True]
    assert evaluated_phases(5, every=1) == [True] * 5
    assert evaluated_phases(3, every=7) == [False, False, True]
    assert evaluated_phases(4, final_only=True) == [False, False, False, True]


def test_metrics_that_need_skipped_cells():
    assert metrics_without_cells(3, set()) == {}
    assert set(metrics_without_cells(3, {(0, 0)})) == {"F.Ra", "FWT", "BWT"}
    assert set(metrics_without_cells(3, {(1, 0), (1, 1)})) == {"F.Ra", "FWT", "BWT"}  # a[1][0] for F.Ra, a[1][1]
    assert set(metrics_without_cells(3, {(0, 2)})) == set()  # an upper-triangle cell no metric needs
    assert set(metrics_without_cells(2, {(1, 1)})) == {"FWT"}  # the last task's diagonal: FWT only


def test_final_scores_are_each_tasks_last_evaluation():
    assert final_scores([[1, None], [2, 3]]) == [2, 3]
    assert final_scores([[1, None], [None, 3]]) == [1, 3]  # the single-task reference: the diagonal
    single = [Phase(i, (i,), (i,), reset=True) for i in range(3)]
    assert trains_each_task_alone(single, 3) and not trains_each_task_alone([Phase(0, (0,), (0,))], 1)


def _config(where, **overrides):
    return tiny_config(where, method="seqlora", tasks=TASKS, **overrides)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    where = tmp_path_factory.mktemp("full")
    return run(_config(where)), where / "run"


def test_eval_every_keeps_training_and_nulls_what_it_skips(full, tmp_path):
    reference, reference_dir = full
    results = run(_config(tmp_path, eval_every=2))
    matrix = results["matrix"]
    assert matrix[0] == [None] * 3 and matrix[1][:2] == reference["matrix"][1][:2]
    assert matrix[2] == reference["matrix"][2]  # the same training: the same final row
    assert results["evaluated_rows"] == [1, 2]
    assert results["metrics"]["AP"] == reference["metrics"]["AP"]
    assert results["metrics"]["BWT"] is None and results["metrics"]["F.Ra"] is None
    assert "a[j][j]" in results["metrics_notes"]["BWT"] and "--eval-every 2" in results["metrics_notes"]["BWT"]
    assert not (tmp_path / "run" / "predictions" / "after_phase_00.json").exists()
    assert "BWT is – because it needs" in (tmp_path / "run" / "report.md").read_text()
    final = checkpoint_tensors(tmp_path / "run", 2)
    expected = checkpoint_tensors(reference_dir, 2)
    assert all(torch.equal(final[n], expected[n]) for n in expected)


def test_eval_final_only_resumes_to_the_same_end(full, tmp_path):
    reference, reference_dir = full
    with pytest.raises(Crash):  # killed right after a phase that is not evaluated
        run(_config(tmp_path, eval_final_only=True), callbacks=[CrashAt("on_train_end", 1)])
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["phases"]["1"]["evaluated"] is False and state["phases"]["1"]["row"] is None
    results = run(_config(tmp_path, eval_final_only=True), output_dir=tmp_path / "run", resume=True)
    assert results["matrix"][:2] == [[None] * 3] * 2 and results["matrix"][2] == reference["matrix"][2]
    assert results["evaluated_rows"] == [2] and set(results["metrics_notes"]) == {"F.Ra", "FWT", "BWT"}
    final = checkpoint_tensors(tmp_path / "run", 2)
    expected = checkpoint_tensors(reference_dir, 2)
    assert all(torch.equal(final[n], expected[n]) for n in expected)
    with pytest.raises(ContinualLMError, match="--eval-final-only"):  # part of the run's identity
        run(_config(tmp_path), output_dir=tmp_path / "run", resume=True)


def test_a_schedule_that_loses_final_scores_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ContinualLMError, match="--eval-every 2: .*sentiment.*no final score"):
        run(tiny_config(tmp_path, method="single", tasks=TASKS, eval_every=2))
    assert not (tmp_path / "run").exists()
