"""Shared evaluation batches across tasks vs one task at a time (eval/generate.py).

    python bench/eval_batching.py [--preset small] [--rows 8 15] [--repeats 3] [--threads 2]

For each benchmark of the preset, the evaluation after task R of the stream (the test inputs of its first R tasks)
is decoded by smollm2-135m with a fresh seqlora LoRA (B = 0, i.e. the base model), once with every task's inputs in
their own batches (the loop before shared batches) and once with `predict_requests` over all of them; interleaved,
medians over the repeats. Writes bench/eval_batching.md and .json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from reproduce import PRESETS, seqlora_runner  # noqa: E402


def main(argv=None) -> int:
    import torch

    from continual_lm.eval.generate import predict_requests
    from continual_lm.io_utils import atomic_write_json, atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 15], help="evaluate after these tasks (1-based)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    results = []
    for benchmark in preset["benchmarks"]:
        runner = seqlora_runner(args.preset, benchmark, args.data_dir)
        config = runner.config
        for row in sorted({min(r, len(runner.tasks)) for r in args.rows}):
            tasks = runner.tasks[:row]
            requests = [(t, j, e.input) for j, t in enumerate(tasks) for e in t.test]
            times = {"per task": [], "shared": []}
            calls = {}
            for _ in range(args.repeats):
                for variant in times:
                    counter = {"calls": 0}
                    original = runner.method.generate

                    def counted(*a, **k):
                        counter["calls"] += 1
                        return original(*a, **k)

                    runner.method.generate = counted
                    start = time.perf_counter()
                    if variant == "shared":
                        preds = predict_requests(runner.model, runner.method, runner.collator, requests,
                                                 config.eval_batch_size, progress=False)
                    else:
                        preds = [p for j, t in enumerate(tasks) for p in predict_requests(
                            runner.model, runner.method, runner.collator, [(t, j, e.input) for e in t.test],
                            config.eval_batch_size, progress=False)]
                    times[variant].append(time.perf_counter() - start)
                    runner.method.generate = original
                    calls[variant] = (counter["calls"], preds)
            same = sum(a == b for a, b in zip(calls["per task"][1], calls["shared"][1]))
            record = {"benchmark": benchmark, "after_task": row, "inputs": len(requests),
                      "per_task_s": statistics.median(times["per task"]), "shared_s": statistics.median(times["shared"]),
                      "per_task_calls": calls["per task"][0], "shared_calls": calls["shared"][0],
                      "identical_predictions": same, "all_times": times}
            record["speedup"] = record["per_task_s"] / record["shared_s"]
            results.append(record)
            print(json.dumps({k: v for k, v in record.items() if k != "all_times"}), flush=True)
    lines = ["# Evaluation: shared batches across tasks vs one task at a time", "",
             f"`python bench/eval_batching.py --preset {args.preset} --rows {' '.join(map(str, args.rows))} "
             f"--repeats {args.repeats} --threads {args.threads}` · {preset['model']} with a fresh seqlora LoRA "
             f"(B = 0) · torch {torch.__version__} · {args.threads} threads · medians of {args.repeats} interleaved "
             "repetitions", "",
             "The evaluation after task R decodes the test inputs of tasks 1..R (the preset's settings: "
             "`max_test_per_task`, `eval_batch_size`, lengths).", "",
             "| benchmark | after task | inputs | generate calls, per task | shared | per task (s) | shared (s) | "
             "speed-up | identical predictions |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['benchmark']} | {r['after_task']} | {r['inputs']} | {r['per_task_calls']} | "
                     f"{r['shared_calls']} | {r['per_task_s']:.1f} | {r['shared_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['identical_predictions']}/{r['inputs']} |")
    atomic_write_text(HERE / "eval_batching.md", "\n".join(lines) + "\n")
    atomic_write_json(HERE / "eval_batching.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
