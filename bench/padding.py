"""Padding in training batches: plain shuffled batches vs length-grouped ones (data/batching.py).

    python bench/padding.py [--preset small] [--data-dir DIR] [--seeds 42 43 44]

For each benchmark of the preset, the training examples are encoded with smollm2-135m's tokenizer exactly as the
loop encodes them (collate.py) and cut into the batches the loop would draw in each phase (same phase seeds): one
phase per task (seqlora and every method that trains one task per phase) and the one phase of `mtl` (every task's
examples at once). Counted: tokens processed (each batch padded to its longest member), of which padding, and for
mtl how many tasks a batch mixes. Also the evaluation's prompt batches (eval/generate.py sorts them by generation
length, then prompt length) for the last evaluation of the stream. Counts only: nothing is timed, and the figures
do not depend on the machine. Writes bench/padding.md and bench/padding.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from reproduce import PRESETS  # noqa: E402


def phase_batches(features, batch_size: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """The batches (indices into ``features``) the loop's loader yields in the first epoch of a phase."""
    import torch

    from continual_lm.data.batching import train_loader

    index = {id(f): i for i, f in enumerate(features)}
    loader = train_loader(features, batch_size, torch.Generator().manual_seed(seed), collate_fn=lambda items: items,
                          group_by_length=group_by_length)
    return [[index[id(f)] for f in batch] for batch in loader]


def measure(features, task_of: list[int], batch_size: int, seed: int, group_by_length: bool) -> dict:
    from continual_lm.data.batching import padding_stats

    batches = phase_batches(features, batch_size, seed, group_by_length)
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(len(features))), "every example once per epoch"
    stats = padding_stats(batches, [len(f.input_ids) for f in features])
    stats["batches"] = len(batches)
    stats["tasks_per_batch"] = sum(len({task_of[i] for i in b}) for b in batches) / len(batches)
    return stats


def total(parts: list[dict]) -> dict:
    processed, real = sum(p["processed"] for p in parts), sum(p["real"] for p in parts)
    return {"processed": processed, "real": real, "padding": processed - real,
            "padding_share": (processed - real) / processed}


def eval_padding(collator, tasks, batch_size: int) -> dict:
    """Prompt tokens of the evaluation after the last task (every task's test inputs, shared batches)."""
    from continual_lm.data.batching import padding_stats
    from continual_lm.data.tasks import Example
    from continual_lm.eval.generate import _batches

    encoded = [collator.encode_prompt(t, Example(e.input, "")) for t in tasks for e in t.test]
    max_new = [collator.max_new_tokens(t) for t in tasks for _ in t.test]
    lengths = [len(e.input_ids) for e in encoded]
    order = sorted(range(len(encoded)), key=lambda k: (max_new[k], lengths[k]))
    return padding_stats(_batches(order, max_new, batch_size), lengths)


def main(argv=None) -> int:
    from continual_lm.config import RunConfig
    from continual_lm.data.collate import Collator
    from continual_lm.io_utils import atomic_write_json, atomic_write_text
    from continual_lm.models.backbone import load_backbone
    from continual_lm.data.stream import load_stream_for
    from continual_lm.train.loop import ContinualRunner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--data-dir", default=os.environ.get("CONTINUAL_LM_DATA",
                                                             str(HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the preset's seed")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    seeds = args.seeds or [preset["seed"]]
    tokenizer = load_backbone(preset["model"]).tokenizer
    results = {"preset": args.preset, "model": preset["model"], "seeds": seeds, "benchmarks": {}}
    for benchmark, settings in preset["benchmarks"].items():
        config = RunConfig(benchmark=benchmark, model=preset["model"], seed=preset["seed"], data_dir=args.data_dir,
                           **settings)
        tasks = load_stream_for(config).tasks
        collator = Collator(tokenizer, False, config.max_input_length, config.max_target_length)
        encoded = [[collator.encode_train(t, e, i) for e in t.train] for i, t in enumerate(tasks)]
        entry = {"settings": settings, "tasks": [t.name for t in tasks]}
        for grouped in (False, True):
            key = "grouped" if grouped else "random"
            per_task, mtl = [], []
            for seed in seeds:
                for row, features in enumerate(encoded):
                    per_task.append(measure(features, [row] * len(features), config.batch_size,
                                            ContinualRunner.phase_seed(seed, row), grouped))
                everything = [f for features in encoded for f in features]
                task_of = [row for row, features in enumerate(encoded) for _ in features]
                mtl.append(measure(everything, task_of, config.batch_size,
                                   ContinualRunner.phase_seed(seed, len(tasks) - 1), grouped))
            entry[key] = {"per_task_phases": total(per_task), "mtl": {**total(mtl), "tasks_per_batch": round(
                sum(m["tasks_per_batch"] for m in mtl) / len(mtl), 3)}}
        entry["eval_last_row"] = eval_padding(collator, tasks, config.eval_batch_size)
        results["benchmarks"][benchmark] = entry
    atomic_write_json(HERE / "padding.json", results)
    atomic_write_text(HERE / "padding.md", markdown(results, argv))
    print(markdown(results, argv))
    return 0


def markdown(results: dict, argv) -> str:
    def pct(x):
        return f"{100 * x:.1f} %"

    command = "python bench/padding.py" + (" " + " ".join(argv) if argv else "")
    lines = ["# Padding in training batches: shuffled vs grouped by length", "",
             f"`{command}` · preset `{results['preset']}` · tokenizer of {results['model']} · seeds "
             f"{', '.join(map(str, results['seeds']))} · counts of tokens, nothing timed", "",
             "Tokens processed = for every batch, rows x its longest member (what the forward computes); padding = "
             "processed - real tokens. *Per-task phases*: every phase of a one-task-per-phase method (seqlora, "
             "inclora, ...), summed. *mtl*: the one phase of every task's examples at once.", "",
             "| benchmark | phases | processed (random) | padding (random) | processed (grouped) | "
             "padding (grouped) | processed: grouped / random | tasks per batch (random → grouped) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for benchmark, entry in results["benchmarks"].items():
        for phases in ("per_task_phases", "mtl"):
            rnd, grp = entry["random"][phases], entry["grouped"][phases]
            mixing = f"{rnd['tasks_per_batch']:.2f} → {grp['tasks_per_batch']:.2f}" if phases == "mtl" else "1 → 1"
            lines.append(f"| {benchmark} | {phases.replace('_', ' ')} | {rnd['processed']:,} | "
                         f"{pct(rnd['padding_share'])} | {grp['processed']:,} | {pct(grp['padding_share'])} | "
                         f"{grp['processed'] / rnd['processed']:.3f} | {mixing} |")
    lines += ["", "Evaluation prompts (the last evaluation of the stream: every task's test inputs, shared batches "
              "sorted by generation length, then prompt length; unchanged by this option):", "",
              "| benchmark | prompt tokens processed | padding |", "| --- | ---: | ---: |"]
    for benchmark, entry in results["benchmarks"].items():
        ev = entry["eval_last_row"]
        lines.append(f"| {benchmark} | {ev['processed']:,} | {pct(ev['padding_share'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
