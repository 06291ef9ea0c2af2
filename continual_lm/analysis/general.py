"""`continual-lm analyze general RUN_DIR --tasks hellaswag winogrande ...`: general abilities of an existing run.

Scores the run's base model (loaded afresh) and its final model (LoRA banks and method restored from the last
checkpoint) on lm-eval tasks, as ``general_tasks`` does during a run (continual_lm/eval/general.py). Prints the
before/after table and writes RUN_DIR/general.json (the shape of ``results.json["general"]``, docs/metrics.md);
``--update-results`` also puts it into results.json and rewrites report.md.
"""
from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path
from typing import Any

from ..errors import ContinualLMError
from ..eval.general import METRIC, check_usable, evaluate_general, general_markdown, task_manager
from ..io_utils import atomic_write_json
from ..train.checkpoint import RunDir


def measure_general(run_dir: str | Path, tasks: list[str] | None = None, *, task_dir: str | Path | None = None,
                    limit: int | None = None, batch_size: int = 8, base: bool = True) -> dict[str, Any]:
    """``{"tasks", "metric", "before", "after"}`` for a run directory; tasks/task_dir/limit default to the run's
    own general_* options. ``base=False`` skips the base model ("before" is then absent)."""
    from ..config import RunConfig
    from ..models.backbone import load_backbone
    from ..train.assemble import load_final_runner

    folder = RunDir(run_dir)
    if not folder.config_path.exists():
        raise ContinualLMError(f"{folder.path}: no config.yaml there; expected a run directory")
    config = RunConfig.from_yaml(folder.config_path)
    tasks = list(tasks or config.general_tasks or [])
    if not tasks:
        raise ContinualLMError("analyze general: pass --tasks NAME... (lm-eval task names); the run has no "
                               "general_tasks of its own")
    task_dir = task_dir if task_dir is not None else config.general_task_dir
    limit = limit if limit is not None else config.general_limit
    manager = task_manager(tasks, task_dir)  # unknown tasks fail here, before any model is loaded
    general: dict[str, Any] = {"tasks": tasks, "metric": METRIC}
    if base:
        # never the run directory's trust_remote_code: a shared run must not make this command run a model's code
        backbone = load_backbone(config.model, dtype=config.dtype, trust_remote_code=False,
                                 seed=config.seed)
        general["before"] = evaluate_general(backbone.model, backbone.tokenizer, tasks, limit=limit,
                                             batch_size=batch_size, is_seq2seq=backbone.is_seq2seq, manager=manager)
        del backbone
        gc.collect()
    runner = load_final_runner(folder.path)
    check_usable(runner.method)
    general["after"] = evaluate_general(runner.model, runner.backbone.tokenizer, tasks, limit=limit,
                                        batch_size=batch_size, is_seq2seq=runner.backbone.is_seq2seq,
                                        manager=manager)
    return general


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="continual-lm analyze general",
                                     description="lm-eval scores of a run's base and final model (general-ability "
                                                 "forgetting); needs pip install 'continual-lm[general]'")
    parser.add_argument("run_dir")
    parser.add_argument("--tasks", nargs="+", help="lm-eval task names (default: the run's general_tasks)")
    parser.add_argument("--task-dir", help="folder of lm-eval task YAMLs for local tasks")
    parser.add_argument("--limit", type=int, help="examples per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-base", action="store_true", help="score the final model only")
    parser.add_argument("--update-results", action="store_true",
                        help="also store the scores as results.json['general'] and rewrite report.md")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        raise ContinualLMError(f"--limit must be a positive integer, got {args.limit}")
    general = measure_general(args.run_dir, args.tasks, task_dir=args.task_dir, limit=args.limit,
                              batch_size=args.batch_size, base=not args.no_base)
    path = Path(args.run_dir)
    atomic_write_json(path / "general.json", general)
    print(general_markdown(general))
    print(f"\nscores -> {path / 'general.json'}")
    if args.update_results:
        results_path = RunDir(path).results_path
        if not results_path.exists():
            raise ContinualLMError(f"--update-results: {results_path} does not exist (the run has not finished)")
        from ..eval.report import write_run_report

        results = json.loads(results_path.read_text())
        results["general"] = general
        atomic_write_json(results_path, results)
        write_run_report(path, results)
        print(f"results.json['general'] and report.md updated in {path}")
    return 0
