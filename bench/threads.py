"""A training step on an idle machine and beside one busy process: the old thread default vs the new policy.

    python bench/threads.py [--steps 6] [--repeats 3] [--data-dir DIR] [--variants old new ...]

A step = one seqlora training step (forward, backward, AdamW) of smollm2-135m on a real batch of the small
preset (standard order 1, its first task, batch 4). Every measurement is a fresh process (OpenMP reads its
environment when torch loads it), timed after one warm-up step; medians over the steps, then over the repeats.
*Busy*: one other process spins a Python loop pinned to one core (``os.sched_setaffinity``) for the whole
measurement. Variants (the environment of the process that trains):

* ``old``: what a run got before the thread policy: torch's defaults (threads = physical cores, OpenMP threads spin
  before they sleep).
* ``new``: the policy of ``continual_lm/threads.py`` as the CLI applies it (``OMP_WAIT_POLICY=PASSIVE``, threads =
  the cores this process may use).
* ``1-thread``, ``spin-new-threads``: one thread with torch's wait policy; the new thread count with spinning
  threads (which of the two changes matters).

Timing needs a quiet machine: run it when nothing else runs. Writes bench/threads.md and bench/threads.json.
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

VARIANTS = ("old", "new", "1-thread", "spin-new-threads")
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CONTINUAL_LM_THREADS")


def child(args) -> None:
    """Time ``args.steps`` training steps in this process (its environment set by the parent)."""
    if args.variant == "new":
        from continual_lm.threads import set_openmp_defaults

        set_openmp_defaults()  # before torch is imported, as continual_lm's CLI does
    # what OpenMP reads when torch loads (importing the bench scripts below sets the variable, too late to matter)
    policy = os.environ.get("OMP_WAIT_POLICY")
    import torch

    from continual_lm.threads import apply_threads

    if args.variant == "new":
        apply_threads()
    elif args.variant == "1-thread":
        torch.set_num_threads(1)
    elif args.variant == "spin-new-threads":
        apply_threads()
    from reproduce import seqlora_runner

    runner = seqlora_runner("small", "standard", args.data_dir)
    model, collator, task = runner.model, runner.collator, runner.tasks[0]
    batch = collator.train_batch([collator.encode_train(task, e, 0) for e in task.train[:4]])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        runner.method.forward(model, batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    print(json.dumps({"threads": torch.get_num_threads(), "wait_policy": policy,
                      "times": times[1:], "tokens": int(batch["input_ids"].numel())}))


def spin() -> subprocess.Popen:
    """One busy process: a Python loop pinned to the first core this process may use."""
    core = min(os.sched_getaffinity(0))
    code = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def measure(variant: str, busy: bool, steps: int, data_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    spinner = spin() if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--variant", variant,
                              "--steps", str(steps), "--data-dir", data_dir], env=env, capture_output=True,
                             text=True, check=True, timeout=1800)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["median_s"] = statistics.median(result["times"])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["old", "new"], choices=VARIANTS)
    parser.add_argument("--data-dir", default=os.environ.get("CONTINUAL_LM_DATA",
                                                             str(HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="old", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(HERE / "threads"), help="writes OUTPUT.md and OUTPUT.json")
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from continual_lm.io_utils import atomic_write_json, atomic_write_text
    from continual_lm.threads import usable_cores

    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):  # interleaved: a drift of the machine touches every variant alike
        for variant in args.variants:
            for busy in (False, True):
                result = measure(variant, busy, args.steps, args.data_dir)
                runs.setdefault(f"{variant}|{'busy' if busy else 'idle'}", []).append(result)
                print(variant, "busy" if busy else "idle", f"{result['median_s']:.3f} s", result["threads"], "threads",
                      flush=True)
    summary = {}
    for key, results in runs.items():
        variant, condition = key.split("|")
        summary.setdefault(variant, {})[condition] = {
            "median_s": statistics.median(r["median_s"] for r in results), "threads": results[0]["threads"],
            "wait_policy": results[0]["wait_policy"], "per_repeat_s": [round(r["median_s"], 3) for r in results]}
    for variant in summary.values():
        variant["busy_over_idle"] = variant["busy"]["median_s"] / variant["idle"]["median_s"]
    report = {"cores": usable_cores(), "cpu_count": os.cpu_count(), "load_before": load_before,
              "load_after": os.getloadavg(), "steps": args.steps, "repeats": args.repeats, "variants": summary}
    atomic_write_json(args.output + ".json", report)
    atomic_write_text(args.output + ".md", markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = ["# Threads: a training step idle and beside one busy process", "",
             f"`python bench/threads.py --steps {report['steps']} --repeats {report['repeats']}` · seqlora step of "
             f"smollm2-135m on a small-preset batch (standard, 4 examples) · {report['cores']} usable cores · load "
             f"average before {', '.join(f'{x:.2f}' for x in report['load_before'])}, after "
             f"{', '.join(f'{x:.2f}' for x in report['load_after'])} · medians of {report['steps']} steps, then of "
             f"{report['repeats']} interleaved repeats (fresh processes)", "",
             "| variant | threads | wait policy | idle step (s) | beside one busy process (s) | busy / idle | "
             "idle vs old idle |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    old_idle = report["variants"].get("old", {}).get("idle", {}).get("median_s")
    for name, v in report["variants"].items():
        versus = f"{v['idle']['median_s'] / old_idle:.2f}x" if old_idle else "–"
        lines.append(f"| {name} | {v['idle']['threads']} | {v['idle']['wait_policy'] or 'libgomp default (spin)'} | "
                     f"{v['idle']['median_s']:.3f} | {v['busy']['median_s']:.3f} | {v['busy_over_idle']:.2f}x | "
                     f"{versus} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
