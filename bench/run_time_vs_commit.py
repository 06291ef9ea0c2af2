"""Whole runs of this checkout against an earlier commit: the same protocol, the same machine, one after the other.

    python bench/run_time_vs_commit.py [--old 8c3f5ed] [--methods seqlora amlora] [--benchmarks standard superni]
                                       [--max-train 32] [--max-test 16] [--superni-tasks 5] [--repeats 2]

A table's wall time mixes the code's speed with the machine's load on the days it ran (`bench/reproduce.py` records
both). This script separates them: each run of the `small` preset, cut to ``--max-train``/``--max-test`` examples per
task (and SuperNI to its first ``--superni-tasks`` tasks), is made once with the old commit's code (a temporary git
worktree, removed afterwards) and once with this checkout's, alternately, ``--repeats`` times, each in a fresh
process with one thread, through each version's own `bench/reproduce.py`. Reported: medians of the runs' own
train and eval time and of the process wall time, their ratios (old / new), both versions' AP and whether their
matrices are identical (they are where no change between the commits alters what a row computes). Run it on an
otherwise idle machine.
Writes bench/run_time_vs_commit.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OLD_DEFAULT = "8c3f5ed"  # the code the committed `small` table of 2026-12-01 ran with

CHILD = r"""
import json, sys, time
tree, runs, benchmark, method, settings, data_dir, model = sys.argv[1:8]
sys.path[:0] = [tree + "/bench", tree]
import reproduce
reproduce.PRESETS["small"]["benchmarks"][benchmark].update(json.loads(settings))
reproduce.PRESETS["small"]["model"] = model or reproduce.PRESETS["small"]["model"]
argv = ["--preset", "small", "--benchmarks", benchmark, "--methods", method, "--runs-dir", runs,
        "--output", runs + "/RESULTS.md", "--data-dir", data_dir, "--threads", "1"]
start = time.perf_counter()
reproduce.main(argv)
wall = time.perf_counter() - start
results = json.load(open(f"{runs}/small/{benchmark}/{method}/results.json"))
print("RESULT " + json.dumps({"wall_s": wall, **results["timing"], "AP": results["metrics"]["AP"],
                             "matrix": results["matrix"], "device": results.get("device")}))
"""


def run(tree: Path, runs: Path, benchmark: str, method: str, settings: dict, data_dir: str, model: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(runs), benchmark, method, json.dumps(settings),
                          data_dir, model], capture_output=True, text=True, env=env, cwd=tree)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"{tree.name} {benchmark}/{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def settings_for(benchmark: str, args) -> dict:
    settings = {"max_train_per_task": args.max_train, "max_test_per_task": args.max_test}
    if benchmark == "superni":
        sys.path.insert(0, str(ROOT))
        from continual_lm.data.benchmarks import resolve_order

        settings["tasks"] = resolve_order("superni", "1")[: args.superni_tasks]
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default=OLD_DEFAULT, help="git revision of the earlier code (default %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["seqlora", "amlora"],
                        help="rows to time (without their FWT reference: FWT is not compared here)")
    parser.add_argument("--benchmarks", nargs="+", default=["standard", "superni"])
    parser.add_argument("--max-train", type=int, default=32)
    parser.add_argument("--max-test", type=int, default=16)
    parser.add_argument("--superni-tasks", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="", help="default: the small preset's model")
    parser.add_argument("--data-dir", default=os.environ.get("CONTINUAL_LM_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--output", default=str(HERE / "run_time_vs_commit"), help="writes OUTPUT.md and OUTPUT.json")
    args = parser.parse_args(argv)
    old_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.old], capture_output=True,
                                text=True)
    if old_commit.returncode:
        parser.error(f"--old: {args.old!r} is not a revision of {ROOT}")
    new_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    # a `kill` (SIGTERM) unwinds like Ctrl-C, so the temporary worktree is removed either way
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    load_before = os.getloadavg()
    samples: dict[tuple, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old_tree), args.old],
                       check=True)
        try:
            for rep in range(args.repeats):
                for benchmark in args.benchmarks:
                    settings = settings_for(benchmark, args)
                    for method in args.methods:
                        versions = [("old", old_tree), ("new", ROOT)]
                        for name, tree in (versions if rep % 2 == 0 else versions[::-1]):
                            runs = Path(tmp) / f"runs-{name}-{rep}"
                            result = run(tree, runs, benchmark, method, settings, args.data_dir, args.model)
                            samples.setdefault((benchmark, method), {}).setdefault(name, []).append(result)
                            print(f"{name} {benchmark}/{method}: {result['wall_s']:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], check=False)
    rows = []
    for (benchmark, method), by_version in samples.items():
        row = {"benchmark": benchmark, "method": method}
        for name, results in by_version.items():
            for key in ("train_s", "eval_s", "wall_s"):
                row[f"{name}_{key}"] = round(statistics.median(r[key] for r in results), 2)
            row[f"{name}_AP"] = results[0]["AP"]
        for key in ("train_s", "eval_s", "wall_s"):
            row[f"ratio_{key}"] = round(row[f"old_{key}"] / row[f"new_{key}"], 3)
        row["matrix_identical"] = by_version["old"][0]["matrix"] == by_version["new"][0]["matrix"]
        rows.append(row)
    total = {name: sum(r[f"{name}_wall_s"] for r in rows) for name in ("old", "new")}
    info = {"old": old_commit.stdout.strip(), "new": new_commit, "settings": vars(args) | {"output": None},
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
            "total_wall_s": total, "total_ratio": round(total["old"] / total["new"], 3)}
    Path(args.output + ".json").write_text(json.dumps(info, indent=1) + "\n")
    lines = [f"# Whole runs: commit {info['old']} (old) vs {info['new']} (new), same machine, one after the other", "",
             f"`python bench/run_time_vs_commit.py --old {args.old} --max-train {args.max_train} --max-test "
             f"{args.max_test} --superni-tasks {args.superni_tasks} --repeats {args.repeats}` · {info['date']} · "
             f"1 thread · load average before {info['load_before']}, after {info['load_after']} · medians of "
             f"{args.repeats} alternated repetitions", "",
             f"**Old / new wall time over these runs: {info['total_ratio']}x** ({total['old']:.0f} s → "
             f"{total['new']:.0f} s).", "",
             "| benchmark | method | train (s) old → new | eval (s) old → new | wall (s) old → new | train | eval | wall "
             "| AP old → new | matrix |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['method']} | {r['old_train_s']:.1f} → {r['new_train_s']:.1f} | "
                     f"{r['old_eval_s']:.1f} → {r['new_eval_s']:.1f} | {r['old_wall_s']:.1f} → {r['new_wall_s']:.1f} | "
                     f"{r['ratio_train_s']}x | {r['ratio_eval_s']}x | {r['ratio_wall_s']}x | "
                     f"{r['old_AP']:.2f} → {r['new_AP']:.2f} | {'same' if r['matrix_identical'] else 'changed'} |")
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
