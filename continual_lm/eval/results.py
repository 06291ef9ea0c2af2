"""results.json from a run's state: a pure function of what the loop recorded (DESIGN.md has the contract).

The final score of task j is its score in the last phase that evaluated it. For a stream trained task after task
that is the last matrix row; for the single-task reference, whose schedule trains and evaluates each task alone
from the initial state, it is the diagonal, and those scores are then also the run's own ``single_task`` scores:
both follow from the method's schedule (``Method.schedule``), not from its name.

``--eval-every K`` evaluates every K-th phase and the last one (``--eval-final-only``: the last one only). The
other rows of the matrix stay null, and a metric that needs one of their cells is null too, with the reason in
``metrics_notes`` (docs/metrics.md); a schedule that would leave a task without a final score is refused before the
run starts.
"""
from __future__ import annotations

from typing import Any

from ..data.tasks import CORPUS, Task
from ..errors import ContinualLMError
from .cl_metrics import cl_metrics, metrics_without_cells


def evaluated_phases(num_phases: int, every: int = 1, final_only: bool = False) -> list[bool]:
    """Whether each phase (in schedule order) is evaluated: every ``every``-th one, and always the last one."""
    return [k == num_phases - 1 or (not final_only and (k + 1) % every == 0) for k in range(num_phases)]


def check_eval_schedule(phases, evaluated: list[bool], names: list[str], option: str) -> None:
    """Refuse an evaluation schedule under which a task's last evaluation (hence its final score) is skipped."""
    last = {j: k for k, phase in enumerate(phases) for j in phase.eval_tasks}
    lost = [names[j] for j, k in sorted(last.items()) if not evaluated[k]]
    if lost:
        raise ContinualLMError(f"{option}: the method's schedule evaluates {', '.join(lost)} last in a phase this "
                               f"option skips, so they would have no final score (e.g. the single-task reference "
                               f"evaluates each task only after its own phase); run without it")


def final_scores(matrix: list[list[float | None]]) -> list[float | None]:
    """Each task's score in the last row that evaluated it (None if none did)."""
    columns = range(len(matrix[0])) if matrix else []
    return [next((row[j] for row in reversed(matrix) if row[j] is not None), None) for j in columns]


def trains_each_task_alone(phases, num_tasks: int) -> bool:
    """A schedule whose phases each train one task from the initial state and evaluate only it: its final scores
    are single-task scores (the FWT reference of other runs)."""
    return len(phases) == num_tasks and all(p.reset and p.train_tasks == p.eval_tasks == (p.row,) for p in phases)


def build_results(*, identity: dict[str, Any], tasks: list[Task], answer_per_task: dict[str, Any], phases,
                  state: dict[str, Any], single_task: dict[str, float] | None, evaluated: list[bool],
                  run_info: dict[str, Any], schedule_option: str = "") -> dict[str, Any]:
    """The results.json content. ``identity``: benchmark, order, method, model, seed; ``single_task``: the FWT
    reference given to the run (--single-task-from) or None; ``evaluated``: ``evaluated_phases``; ``run_info``:
    versions, device, engine, batch, protocol, pet_kind, preset; ``schedule_option``: the option behind a skipped
    evaluation, for the notes."""
    T = len(tasks)
    names = [t.name for t in tasks]
    matrix: list[list[float | None]] = [[None] * T for _ in range(T)]
    for phase in phases:
        row = state["phases"][str(phase.row)].get("row")
        if row is not None:
            matrix[phase.row] = row
    final = final_scores(matrix)
    own = trains_each_task_alone(phases, T)
    reference = dict(zip(names, final)) if own else single_task
    metrics = cl_metrics(matrix, single_task=[single_task[n] for n in names] if single_task and not own else None,
                         final_row=final)
    skipped = {(phase.row, j) for phase, done in zip(phases, evaluated) if not done for j in phase.eval_tasks}
    notes = {name: f"needs {what}; {schedule_option} evaluated after phase(s) "
                   f"{', '.join(str(p.row + 1) for p, done in zip(phases, evaluated) if done)} only"
             for name, what in metrics_without_cells(T, skipped).items()}
    metrics.update({name: None for name in notes})
    phase_states = state["phases"].values()
    results: dict[str, Any] = {
        **identity,
        "tasks": names,
        "metric_per_task": {t.name: t.metric for t in tasks},
        "answer_per_task": answer_per_task,
        "matrix": matrix,
        "final_scores": dict(zip(names, final)),
        "single_task": reference,
        "metrics": metrics,
    }
    if skipped:
        results["metrics_notes"] = notes
        results["evaluated_rows"] = [p.row for p, done in zip(phases, evaluated) if done]
    results["timing"] = {"train_s": round(sum(p.get("train_s", 0.0) for p in phase_states), 2),
                         "eval_s": round(sum(p.get("eval_s", 0.0) for p in phase_states), 2)}
    results.update(run_info)
    if any(t.kind == CORPUS for t in tasks):  # continual pre-training: the end tasks' macro-F1 too
        f1 = [[None] * T for _ in range(T)]
        for phase in phases:
            f1[phase.row] = state["phases"][str(phase.row)].get("row_macro_f1") or [None] * T
        results["matrix_macro_f1"] = f1
        f1_metrics = cl_metrics(f1, final_row=final_scores(f1))
        f1_metrics.update({name: None for name in notes})
        results["metrics_macro_f1"] = f1_metrics
    results.update(state.get("sections", {}))
    return results
