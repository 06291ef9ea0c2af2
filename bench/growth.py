"""How a run's peak memory and its per-phase checkpoints grow with the number of tasks (1, 4, 15) on the tiny model.

    python bench/growth.py [--reps 3] [--methods inclora amlora]

Every setting is a real `continual-lm run` subprocess (this script re-run with --child, calling the CLI's main) on a
generated custom stream (15 small yes/no tasks, 8 training and 4 test examples each); its peak RSS is the child's
ru_maxrss from os.wait4, and the child also notes its peak just before the final report (results.json, report.md,
heatmap): the loop's own peak.
Repetitions are interleaved (every setting once per round) and the figures are medians. The checkpoint figures
are exact: the tensor bytes of each phase's trainable state (as its checkpoint loads it) against the per-task PET
bytes computed by `continual_lm.plan` on the meta device; growth between consecutive phases must equal one task's PET
parameters. (On disk a checkpoint stores only what changed since the earlier ones: bench/checkpoint_disk.md.)
Writes bench/growth.md and bench/growth.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK_COUNTS = (1, 4, 15)
MODEL = "tiny-random-llama"
WORDS = ["red", "blue", "sun", "moon", "cat", "dog", "tree", "car", "book", "cup", "hat", "star", "fish", "bird"]


def write_stream(folder: Path, num_tasks: int = 15) -> Path:
    """15 tasks "does the phrase contain WORD_k?" (yes/no), small and generated."""
    rng = random.Random(0)
    entries = []
    for k in range(num_tasks):
        word = WORDS[k % len(WORDS)]
        records = []
        for i in range(12):
            phrase = " ".join(rng.sample(WORDS, 3))
            records.append({"input": phrase, "output": "yes" if word in phrase.split() else "no"})
        (folder / f"task{k:02d}.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
        entries.append({"name": f"task{k:02d}", "file": f"task{k:02d}.jsonl", "test_fraction": 0.34,
                        "instruction": f"Does the phrase contain the word {word}?", "labels": ["yes", "no"]})
    import yaml

    path = folder / "stream.yaml"
    path.write_text(yaml.safe_dump({"tasks": entries}, sort_keys=False))
    return path


def run_once(stream: Path, method: str, tasks: int, out: Path) -> dict:
    names = [f"task{k:02d}" for k in range(tasks)]
    trace = out.with_suffix(".loop_peak")
    command = [sys.executable, __file__, "--child", str(trace), "run", "--benchmark", "custom", "--stream-file", str(stream),
               "--tasks", *names, "--method", method, "--model", MODEL, "--seed", "1", "--batch-size", "4",
               "--max-input-length", "64", "--max-target-length", "4", "--no-progress", "--overwrite",
               "--output-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-3000:]}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "loop_peak_rss_mib": float(trace.read_text()),
            "wall_s": time.perf_counter() - start, "checkpoints": checkpoint_sizes(out, tasks)}


def child(trace: str, argv: list[str]) -> int:
    """`continual-lm ARGV` in this process, noting the peak RSS reached before the run's final report (results,
    report.md, heatmap) is written: the loop's own peak."""
    import resource

    from continual_lm import callbacks
    from continual_lm.cli import main as cli_main

    class NotePeak(callbacks.Callback):
        def on_stream_end(self, run):
            Path(trace).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

    shipped = callbacks.default_callbacks
    callbacks.default_callbacks = lambda: [NotePeak(), *shipped()]
    return cli_main(argv)


def checkpoint_sizes(out: Path, tasks: int) -> list[dict]:
    """Per phase: the tensor bytes of its trainable state, and the bytes its checkpoint added on disk (manifest,
    method state and the blobs no earlier phase wrote)."""
    from continual_lm.train.checkpoint import RunDir

    sizes, seen = [], set()
    for row in range(tasks):
        folder = out / "checkpoints" / f"phase_{row:02d}"
        trainable = RunDir(out).load_checkpoint(row)[0]
        blobs = json.loads((folder / "manifest.json").read_text())["blobs"]
        added = sum(blob["bytes"] for name, blob in blobs.items() if name not in seen)
        seen |= set(blobs)
        sizes.append({"phase": row, "tensor_bytes": sum(t.numel() * t.element_size() for t in trainable.values()),
                      "added_bytes": added + sum(p.stat().st_size for p in folder.iterdir())})
    return sizes


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        raise SystemExit(child(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["inclora", "amlora"])
    args = parser.parse_args()

    from continual_lm.plan import plan

    load = os.getloadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stream = write_stream(Path(tmp))
        settings = [(m, n) for m in args.methods for n in TASK_COUNTS]
        samples = {s: [] for s in settings}
        for rep in range(args.reps):
            for method, tasks in settings[rep % len(settings):] + settings[:rep % len(settings)]:  # rotating order
                samples[(method, tasks)].append(run_once(stream, method, tasks, Path(tmp) / f"{method}-{tasks}"))
                print(f"rep {rep + 1}: {method} {tasks} tasks: {samples[(method, tasks)][-1]['peak_rss_mib']:.0f} MiB",
                      flush=True)
    for method in args.methods:
        expected = plan(MODEL, method, max(TASK_COUNTS)).checkpoint_bytes_per_phase
        per_task = [expected[0]] + [b - a for a, b in zip(expected, expected[1:])]
        rows = {}
        for tasks in TASK_COUNTS:
            runs = samples[(method, tasks)]
            checkpoints = runs[0]["checkpoints"]
            for c in checkpoints:
                c["expected_tensor_bytes"] = expected[c["phase"]]
            rows[tasks] = {"peak_rss_mib_median": round(statistics.median(r["peak_rss_mib"] for r in runs), 1),
                           "peak_rss_mib_all": [round(r["peak_rss_mib"], 1) for r in runs],
                           "loop_peak_rss_mib_median": round(statistics.median(r["loop_peak_rss_mib"] for r in runs), 1),
                           "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 1),
                           "checkpoints": checkpoints}
        results[method] = {"per_task_pet_bytes": per_task, "by_tasks": rows}
    record = {"model": MODEL, "task_counts": list(TASK_COUNTS), "reps": args.reps, "load_average_at_start": load,
              "python": platform.python_version(), "cpu_count": os.cpu_count(), "results": results}
    (HERE / "growth.json").write_text(json.dumps(record, indent=1) + "\n")
    (HERE / "growth.md").write_text(markdown(record) + "\n")
    print(markdown(record))


def markdown(record: dict) -> str:
    lines = [f"# Growth with the number of tasks ({record['model']})", "",
             f"`python bench/growth.py --reps {record['reps']}`; load average at start "
             f"{', '.join(f'{x:.2f}' for x in record['load_average_at_start'])} on {record['cpu_count']} CPUs "
             f"(shared machine). Peak RSS: median of {record['reps']} interleaved runs (a `continual_lm run` "
             "subprocess each). Checkpoint tensor bytes: exact, the same in every repetition.", ""]
    for method, data in record["results"].items():
        per_task = data["per_task_pet_bytes"]
        lines += [f"## {method}", "",
                  f"Expected PET bytes per task (meta-device plan, float32): first task {per_task[0]:,}, "
                  f"each later task {per_task[1]:,}.", "",
                  "| tasks | peak RSS MiB (median) | runs | loop peak MiB (before the report) | last checkpoint tensor bytes | expected | growth per "
                  "phase (measured) | header bytes | wall s |",
                  "| ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
        for tasks, row in data["by_tasks"].items():
            ckpts = row["checkpoints"]
            growth = sorted({b["tensor_bytes"] - a["tensor_bytes"] for a, b in zip(ckpts, ckpts[1:])})
            lines.append(f"| {tasks} | {row['peak_rss_mib_median']} | {row['peak_rss_mib_all']} | "
                         f"{row['loop_peak_rss_mib_median']} | "
                         f"{ckpts[-1]['tensor_bytes']:,} | {ckpts[-1]['expected_tensor_bytes']:,} | "
                         f"{', '.join(f'{g:,}' for g in growth) or '-'} | {ckpts[-1]['header_bytes']:,} | "
                         f"{row['wall_s_median']} |")
        rss = [row["peak_rss_mib_median"] for row in data["by_tasks"].values()]
        loop_rss = [row["loop_peak_rss_mib_median"] for row in data["by_tasks"].values()]
        lines += ["", f"Peak RSS 1 -> 15 tasks: {rss[-1] - rss[0]:+.1f} MiB for the whole run, "
                      f"{loop_rss[-1] - loop_rss[0]:+.1f} MiB for the loop (training + evaluation, before the final "
                      "report); 14 more tasks of PET parameters are "
                      f"{sum(per_task[1:]) / 2**20:.3f} MiB of tensors (x3 with gradients and AdamW states while "
                      "trained, only the current task's).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
