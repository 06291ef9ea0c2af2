"""Evaluation: batches that stop once every row's answer is settled vs decoding the whole new-token budget.

    python bench/eval_stop.py [--preset small] [--repeats 2] [--threads 1] [--data-dir DIR]

For each benchmark of the preset, the last evaluation of the stream (every task's test inputs, shared batches) is
decoded by smollm2-135m with a fresh seqlora LoRA (B = 0, i.e. the base model) with ``predict_requests(...,
stop_early=False)`` (every batch runs to EOS or its budget: the evaluation before this change) and with the default
(a batch stops when all its rows are settled by their task's stop rule). Counted from forward hooks: forward calls
(the prompt pass and one per new token) and the rows they carry; timed: the whole evaluation and its prompt passes,
interleaved repetitions, medians. The predictions must be identical. Writes bench/eval_stop.md and .json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from reproduce import PRESETS, seqlora_runner  # noqa: E402


class ForwardCounter:
    """Counts the model's forward calls and times them: prompt passes (more than one position) and new tokens."""

    def __init__(self, model):
        self.prompt_calls = self.step_calls = self.step_rows = 0
        self.prompt_s = 0.0
        self._start = None
        self._handles = [model.register_forward_pre_hook(self.before, with_kwargs=True),
                         model.register_forward_hook(self.after, with_kwargs=True)]

    def before(self, module, args, kwargs):
        self._start = time.perf_counter()
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        self._shape = tuple(inputs.shape[:2])

    def after(self, module, args, kwargs, output):
        rows, width = self._shape
        if width > 1:
            self.prompt_calls += 1
            self.prompt_s += time.perf_counter() - self._start
        else:
            self.step_calls += 1
            self.step_rows += rows

    def remove(self):
        for handle in self._handles:
            handle.remove()


def main(argv=None) -> int:
    import torch

    from continual_lm.eval.generate import predict_requests
    from continual_lm.io_utils import atomic_write_json, atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("CONTINUAL_LM_DATA",
                                                             str(HERE.parent.parent / "shared" / "data")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for benchmark in PRESETS[args.preset]["benchmarks"]:
        runner = seqlora_runner(args.preset, benchmark, args.data_dir)
        requests = [(t, j, e.input) for j, t in enumerate(runner.tasks) for e in t.test]
        runs = {"budget": [], "settled": []}
        for _ in range(args.repeats):
            for variant in runs:
                counter = ForwardCounter(runner.model)
                start = time.perf_counter()
                predictions = predict_requests(runner.model, runner.method, runner.collator, requests,
                                               runner.config.eval_batch_size, progress=False,
                                               stop_early=variant == "settled")
                seconds = time.perf_counter() - start
                counter.remove()
                runs[variant].append({"s": seconds, "prompt_s": counter.prompt_s, "prompt_calls": counter.prompt_calls,
                                      "step_calls": counter.step_calls, "step_rows": counter.step_rows,
                                      "predictions": predictions})
        record = {"benchmark": benchmark, "inputs": len(requests), "tasks": len(runner.tasks),
                  "identical_predictions": sum(a == b for a, b in zip(runs["budget"][0]["predictions"],
                                                                      runs["settled"][0]["predictions"]))}
        for variant, reps in runs.items():
            record[variant] = {"s": statistics.median(r["s"] for r in reps),
                               "prompt_s": statistics.median(r["prompt_s"] for r in reps),
                               **{k: reps[0][k] for k in ("prompt_calls", "step_calls", "step_rows")},
                               "all_s": [round(r["s"], 2) for r in reps]}
        record["speedup"] = record["budget"]["s"] / record["settled"]["s"]
        results.append(record)
        print({k: v for k, v in record.items()}, flush=True)
    command = f"python bench/eval_stop.py --preset {args.preset} --repeats {args.repeats} --threads {args.threads}"
    lines = ["# Evaluation: stop a batch once its answers are settled", "",
             f"`{command}` · {PRESETS[args.preset]['model']} with a fresh seqlora LoRA (B = 0) · torch "
             f"{torch.__version__} · {args.threads} thread(s) · load average at the end "
             f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} · medians of {args.repeats} interleaved repetitions",
             "", "The last evaluation of each stream (every task's test inputs, shared batches). *budget*: every batch "
             "generates until EOS or its new-token budget (before); *settled*: a batch stops once each row's answer "
             "is settled by its task's stop rule (now). New-token rows = rows x steps of the batches' one-token "
             "forward passes.", "",
             "| benchmark | inputs | new-token rows (budget → settled) | steps (budget → settled) | "
             "prompt passes (s) | total (s), budget | total (s), settled | speed-up | identical predictions |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        b, s = r["budget"], r["settled"]
        lines.append(f"| {r['benchmark']} | {r['inputs']} | {b['step_rows']:,} → {s['step_rows']:,} | "
                     f"{b['step_calls']} → {s['step_calls']} | {s['prompt_s']:.1f} | {b['s']:.1f} | {s['s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['identical_predictions']}/{r['inputs']} |")
    atomic_write_text(HERE / "eval_stop.md", "\n".join(lines) + "\n")
    atomic_write_json(HERE / "eval_stop.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
