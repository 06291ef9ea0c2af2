"""`reproduce.py --jobs`: two runs at a time on one thread each vs one run at a time on every core.

    python bench/jobs_throughput.py [--steps 8] [--eval-inputs 32] [--repeats 2]

A unit of work is what a run of the small preset does most: ``--steps`` LoRA training steps of smollm2-135m (seqlora)
on the preset's first standard batches, then the evaluation of ``--eval-inputs`` SuperNI test inputs (shared
batches, the preset's lengths). Each unit runs in a fresh process (as each run of `reproduce.py --jobs` does).
"sequential": 2 units one after the other, each with all cores as threads; "parallel": 2 units at once, each with
cores / 2 threads. Both variants alternate ``--repeats`` times; the figure is units per hour (medians), and the
ratio says how much more the machine gets done with --jobs 2. Writes bench/jobs_throughput.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def unit(steps: int, eval_inputs: int, data_dir: str) -> dict:
    """One unit of work in this process; returns its timings."""
    import torch

    from continual_lm.eval.generate import predict_requests
    from reproduce import seqlora_runner

    timings = {}
    for benchmark in ("standard", "superni"):
        runner = seqlora_runner("small", benchmark, data_dir)
        config, model, task = runner.config, runner.model, runner.tasks[0]
        start = time.perf_counter()
        if benchmark == "standard":
            features = [runner.collator.encode_train(task, e, 0) for e in task.train[:steps * config.batch_size]]
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=config.lr)
            model.train()
            for k in range(steps):
                batch = runner.collator.train_batch(features[k * config.batch_size:(k + 1) * config.batch_size])
                runner.method.forward(model, batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            timings["train_s"] = time.perf_counter() - start
        else:
            requests = [(t, j, e.input) for j, t in enumerate(runner.tasks) for e in t.test][:eval_inputs]
            predict_requests(model, runner.method, runner.collator, requests, config.eval_batch_size, progress=False)
            timings["eval_s"] = time.perf_counter() - start
    return timings


def launch(threads: int, args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, __file__, "--worker", "--threads", str(threads), "--steps",
                             str(args.steps), "--eval-inputs", str(args.eval_inputs), "--data-dir", args.data_dir],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def timed(processes_in_waves: list[list[int]], args) -> tuple[float, list[dict]]:
    start, units = time.perf_counter(), []
    for wave in processes_in_waves:
        running = [launch(threads, args) for threads in wave]
        for process in running:
            out, _ = process.communicate()
            if process.returncode:
                raise SystemExit(f"worker failed (exit {process.returncode})")
            units.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - start, units


def main(argv=None) -> int:
    from continual_lm.io_utils import atomic_write_json, atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--eval-inputs", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(unit(args.steps, args.eval_inputs, args.data_dir)), flush=True)
        return 0
    cores = os.cpu_count() or 1
    variants = {"sequential": [[cores], [cores]], "parallel": [[max(1, cores // 2)] * 2]}
    walls = {name: [] for name in variants}
    units = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, waves in variants.items():
            wall, done = timed(waves, args)
            walls[name].append(wall)
            units[name] += done
            print(name, round(wall, 1), done, flush=True)
    per_hour = {name: 2 * 3600 / statistics.median(w) for name, w in walls.items()}
    ratio = per_hour["parallel"] / per_hour["sequential"]
    record = {"cores": cores, "steps": args.steps, "eval_inputs": args.eval_inputs, "repeats": args.repeats,
              "wall_s": walls, "units": units, "units_per_hour": per_hour, "parallel_over_sequential": ratio}
    median = {name: {k: statistics.median(u[k] for u in units[name]) for k in ("train_s", "eval_s")}
              for name in variants}
    lines = ["# `reproduce.py --jobs 2` vs one run at a time", "",
             f"`python bench/jobs_throughput.py --steps {args.steps} --eval-inputs {args.eval_inputs} --repeats "
             f"{args.repeats}` · {cores} cores · a unit = {args.steps} seqlora training steps on the small preset's "
             f"standard batches + the evaluation of {args.eval_inputs} SuperNI test inputs, in a fresh process · "
             f"medians of {args.repeats} alternating repetitions", "",
             "| variant | threads per unit | wall for 2 units (s) | units per hour | train part of a unit (s) | "
             "eval part (s) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, waves in variants.items():
        lines.append(f"| {name} | {waves[0][0]} | {statistics.median(walls[name]):.1f} | {per_hour[name]:.1f} | "
                     f"{median[name]['train_s']:.1f} | {median[name]['eval_s']:.1f} |")
    lines += ["", f"Two units at a time on {cores // 2} thread(s) each do **{ratio:.2f}x** the work per hour of one "
              f"unit at a time on {cores} threads (process start and model loading included in the wall time)."]
    atomic_write_text(HERE / "jobs_throughput.md", "\n".join(lines) + "\n")
    atomic_write_json(HERE / "jobs_throughput.json", record)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
