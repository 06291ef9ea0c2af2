"""`continual-lm demo`: the main job. A few methods on the embedded demo stream, then one comparison table.

Sized to finish within 10 minutes on 2 CPU cores with SmolLM2-135M. Runs that already finished are reused and
interrupted ones resumed, so running the demo twice costs nothing the second time (``--fresh`` starts over).
"""
from __future__ import annotations

import time
from pathlib import Path

from .config import RunConfig
from .eval.report import comparison_markdown, plot_comparison_bars
from .io_utils import atomic_write_text

DEMO_METHODS = ["seqlora", "inclora"]
DEMO_SETTINGS = dict(
    benchmark="demo", epochs=3, lr=1e-3, batch_size=8, eval_batch_size=32, max_input_length=64,
    max_target_length=8, max_train_per_task=64, max_test_per_task=32,
)


def demo_config(method: str, model: str, seed: int, output_dir: Path, progress: bool = True) -> RunConfig:
    return RunConfig(method=method, model=model, seed=seed, output_dir=str(output_dir), progress=progress,
                     **DEMO_SETTINGS)


def run_demo(output_dir: str | Path = "continual_lm_demo", model: str = "smollm2-135m", methods: list[str] | None = None,
             seed: int = 42, fresh: bool = False, progress: bool = True) -> list[dict]:
    """Each method into OUTPUT_DIR/<method>. A finished run of the same configuration is reused and an interrupted
    one resumed; a run of another configuration (another model or seed) is refused unless ``fresh``, which replaces
    the demo's runs (and nothing that is not a run)."""
    from .train.assemble import prepare_run

    root = Path(output_dir)
    methods = methods or DEMO_METHODS
    configs = {method: demo_config(method, model, seed, root / method, progress) for method in methods}
    results = []
    start = time.perf_counter()
    for method, config in configs.items():
        run_dir = root / method
        prepared = prepare_run(config, output_dir=run_dir, overwrite=fresh, reuse=not fresh, how_to_replace="--fresh")
        if prepared.action == "reuse":
            print(f"[demo] {method}: reusing finished run {run_dir}")
        else:
            print(f"[demo] {method}: {'resuming' if prepared.action == 'resume' else 'training'} on the demo stream "
                  f"-> {run_dir}")
        results.append(prepared.start())
    table = comparison_markdown(results)
    atomic_write_text(root / "comparison.md", table + "\n")
    plot_comparison_bars(results, root / "comparison.png")
    print()
    print(table)
    print(f"\n{len(methods)} methods in {time.perf_counter() - start:.0f} s; reports, heatmaps and checkpoints "
          f"under {root}/ (comparison.md, comparison.png, <method>/report.md)")
    return results
