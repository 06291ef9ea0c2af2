"""`continual-lm demo`: the main job. A few methods on the embedded demo stream, then one comparison table.

Sized to finish within 10 minutes on 2 CPU cores with SmolLM2-135M. Runs that already finished are reused and
interrupted ones resumed, so running the demo twice costs nothing the second time (``--fresh`` starts over).
"""
from __future__ import annotations

import json
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
    from .models.backbone import load_backbone
    from .train.loop import run

    root = Path(output_dir)
    methods = methods or DEMO_METHODS
    results = []
    start = time.perf_counter()
    for method in methods:
        run_dir = root / method
        done = run_dir / "results.json"
        if done.exists() and not fresh:
            print(f"[demo] {method}: reusing finished run {run_dir}")
            results.append(json.loads(done.read_text()))
            continue
        print(f"[demo] {method}: training on the demo stream -> {run_dir}")
        config = demo_config(method, model, seed, run_dir, progress)
        backbone = load_backbone(model, seed=seed)  # a fresh copy per method: methods modify the model
        resume = (run_dir / "config.yaml").exists() and not fresh
        results.append(run(config, output_dir=run_dir, resume=resume, overwrite=not resume, backbone=backbone))
    table = comparison_markdown(results)
    atomic_write_text(root / "comparison.md", table + "\n")
    plot_comparison_bars(results, root / "comparison.png")
    print()
    print(table)
    print(f"\n{len(methods)} methods in {time.perf_counter() - start:.0f} s; reports, heatmaps and checkpoints "
          f"under {root}/ (comparison.md, comparison.png, <method>/report.md)")
    return results
