"""`continual-lm analyze migu-overlap RUN_DIR`: MIGU's task-similarity heatmap (paper, Figure 4).

With the run's final model, feed ``--samples`` training examples of each task and rank the output units of one
layer by MIGU's magnitude statistic (L1-normalised |W x| averaged over the non-padding tokens; for a LoRA run the
layer is a LoRA bank and the units are the rows of the newest trainable LoRA's B, ranked by its own output
x_B = B A x, as MIGU ranks them). The *updated positions* of a task are the units MIGU would update, the 1 - T
fraction of largest magnitude. Cell (i, j) is the overlap ratio
|U_i & U_j| / |U_i|. Run it on a `seqlora` run and on a `seqlora+migu` run for the paper's "without / with MIGU".
Writes RUN_DIR/migu_overlap_heatmap.png (shown by the run report) and a JSON with the matrix next to it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import ContinualLMError, unknown_choice
from ..eval.report import plot_fraction_heatmap
from ..io_utils import atomic_write_json
from ..train.assemble import load_final_runner


def updated_positions(runner, layer: str, task_index: int, samples: int, threshold: float) -> torch.Tensor:
    """Indices of the units MIGU updates for ``samples`` training examples of one task (a bool mask over d_out)."""
    from ..methods.base import TrainExample
    from ..methods.migu import MagnitudeStats, smallest_units

    model, method = runner.model, runner.method
    examples = [TrainExample(task_index, e) for e in runner.tasks[task_index].train[:samples]]
    stats = MagnitudeStats(model, {layer: model.get_submodule(layer)}, always=True)
    try:
        with torch.no_grad():
            for batch in method.context.train_batches(examples):
                stats.set_batch(batch)
                method.forward(model, batch)
    finally:
        stats.remove()
    magnitude = stats.output[ranked_key(stats.output, layer)]
    updated = torch.ones_like(magnitude, dtype=torch.bool)
    updated[smallest_units(magnitude, threshold)] = False
    return updated


def ranked_key(statistics: dict[str, torch.Tensor], layer: str) -> str:
    """The statistic of ``layer`` that ranks its output units: its own (a linear layer) or, for a LoRA bank, that of
    the newest trainable LoRA's B (``{layer}.lora_B.{i}``)."""
    if layer in statistics:
        return layer
    prefix = f"{layer}.lora_B."
    loras = [int(key[len(prefix):]) for key in statistics if key.startswith(prefix)]
    if not loras:
        raise ContinualLMError(f"--layer {layer}: the run's final model trains no LoRA of this bank, and MIGU ranks "
                               f"the rows of the B being trained; choose a layer whose LoRA is trainable")
    return f"{prefix}{max(loras)}"


def overlap_matrix(positions: list[torch.Tensor]) -> list[list[float]]:
    return [[round(float((a & b).sum() / a.sum().clamp_min(1)), 4) for b in positions] for a in positions]


def main(argv: list[str]) -> int:
    from ..methods.migu import default_threshold, select_targets

    parser = argparse.ArgumentParser(prog="continual-lm analyze migu-overlap", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--layer", help="module name (default: the middle one of MIGU's target modules)")
    parser.add_argument("--samples", type=int, default=100, help="training samples per task (default 100)")
    parser.add_argument("--threshold", type=float,
                        help="T (default: the run's --migu-threshold, else MIGU's default for its method)")
    parser.add_argument("--output", help="PNG path (default RUN_DIR/migu_overlap_heatmap.png); JSON beside it")
    args = parser.parse_args(argv)
    if args.samples <= 0:
        raise ContinualLMError(f"--samples must be a positive integer, got {args.samples}")
    runner = load_final_runner(args.run_dir, with_data=True)  # it reads each task's training examples
    config = runner.config
    threshold = args.threshold
    if threshold is None:
        threshold = (config.method_options.get("migu") or {}).get("threshold")
    if threshold is None:
        threshold = default_threshold(config.method)
    if not 0 <= threshold < 1:
        raise ContinualLMError(f"--threshold must be in [0, 1), got {threshold}")
    targets = list(select_targets(runner.model, None))
    layer = args.layer or targets[len(targets) // 2]
    if layer not in targets:
        raise unknown_choice("--layer", layer, targets)
    positions = [updated_positions(runner, layer, j, args.samples, threshold) for j in range(len(runner.tasks))]
    matrix = overlap_matrix(positions)
    names = [t.name for t in runner.tasks]
    output = Path(args.output) if args.output else Path(args.run_dir) / "migu_overlap_heatmap.png"
    title = f"{config.method} on {config.model}\nupdated-position overlap, {layer}, T={threshold:g}"
    plot_fraction_heatmap(matrix, output, rows=names, columns=names, xlabel="task", ylabel="task", title=title,
                          colorbar_label="overlap of updated positions")
    record = {"run_dir": str(args.run_dir), "method": config.method, "model": config.model, "layer": layer,
              "threshold": threshold, "samples_per_task": args.samples, "units": int(positions[0].numel()),
              "tasks": names, "overlap": matrix}
    atomic_write_json(output.with_suffix(".json"), record)
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return 0
