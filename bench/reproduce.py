"""One-command small-scale reproduction: every registered method on one fixed protocol, then bench/RESULTS.md.

    python bench/reproduce.py --preset small [--jobs 2] [--benchmarks standard superni] [--methods seqlora ...]
                              [--data-dir ../shared/data] [--mixed-precision bf16] [--dry-run] [--table-only]

Presets: `small` (sized for a 2-core CPU: its 38 runs took 3.05 h with --jobs 2; writes bench/RESULTS.md),
`base` (2-2.7x the training examples of small; about 10 CPU hours or one GPU hour; bench/RESULTS-base.md), `medium`
(standard order 1 with 8x base's steps per task, for a GPU; bench/RESULTS-medium.md) and `trace` (TRACE order 1 at
the small preset's scale, 8 methods, a few CPU hours with --jobs 2; bench/RESULTS-trace.md).

Runs go to bench/runs/<preset>/<benchmark>/<method>/ (checkpoints: last phase only). Finished runs are skipped,
interrupted ones resumed, so the script can be stopped and started again at any time. The `single` references run
first on each benchmark and give every other run its FWT reference: `single` (one LoRA per task) for the LoRA
rows, `single-full` for full fine-tuning (seqft, osf, magmax), `single-prompt` for the soft-prompt methods. A
method may also be a named variant of VARIANTS (a method with options, e.g. `sapt-lora-noarm`). RESULTS.md always
lists every finished run found under the runs directory (so several invocations, e.g. one per method, build one
table); `--table-only` just rewrites it.

`--jobs N` runs N runs at a time, each in its own process with usable cores/N threads (the cores this process may
run on, `os.sched_getaffinity`; `--threads` to set) and OpenMP threads that sleep while they wait
(continual_lm/threads.py), its output in bench/runs/<preset>/<benchmark>/<method>.log. On a 2-core CPU `--jobs 2`
gets more done per hour than one run on 2 threads (1.33x, bench/jobs_throughput.md). Every invocation that runs
something records its wall time, jobs, threads and finished runs in bench/runs/<preset>/invocations.json (at its
start and after each run, so a killed one still counts), and RESULTS.md quotes them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from continual_lm.threads import apply_threads, set_openmp_defaults, usable_cores  # noqa: E402 (no torch)

set_openmp_defaults()  # before torch loads OpenMP: its threads sleep while they wait (continual_lm/threads.py)

from continual_lm.config import RunConfig  # noqa: E402
from continual_lm.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from continual_lm.methods.registry import METHODS, method_class  # noqa: E402

# `small`: sized for a 2-core CPU: all 38 runs in 3.05 h with --jobs 2 (bench/RESULTS.md has the measured wall
# time). Batch 4, so that a task still gets 24 (standard) / 6 (SuperNI) optimizer steps from few examples.
# standard: 4 tasks; 96 train / 40 test examples per task (24 steps per task)
STANDARD_SMALL = dict(order="1", max_train_per_task=96, max_test_per_task=40, max_input_length=112,
                      max_target_length=8, epochs=1, batch_size=4, eval_batch_size=16)
# SuperNI: 15 tasks; 24 train / 4 test examples per task (6 steps per task); generation up to 16 new tokens
SUPERNI_SMALL = dict(order="1", max_train_per_task=24, max_test_per_task=4, max_input_length=128,
                     max_target_length=16, epochs=1, batch_size=4, eval_batch_size=16)
# `base`: the small preset of the first reproduction, with 2.7x (standard) / 2x (SuperNI) the training examples, at
# batch 8, and more test examples: about 10 h of a 2-core CPU, 70 process-minutes on an H100 (bench/RESULTS-base.md).
# standard: 256 train / 50 test per task (32 steps per task); SuperNI: 48 / 8 (6 steps per task), up to 24 new tokens
STANDARD_BASE = dict(order="1", max_train_per_task=256, max_test_per_task=50, max_input_length=128,
                     max_target_length=8, epochs=1, batch_size=8, eval_batch_size=16)
SUPERNI_BASE = dict(order="1", max_train_per_task=48, max_test_per_task=8, max_input_length=160,
                    max_target_length=24, epochs=1, batch_size=8, eval_batch_size=16)

# TRACE: 8 tasks; 48 train / 20 test examples per task (12 steps per task), inputs <= 256 tokens (the input text is
# cut, the instruction and cue kept), answers <= 48 tokens (each task's budget: 95th percentile of its answers, so
# 3 for the A/B/C stance tasks, 7 for NumGLUE, 31 for Py150, 48 for the summaries, ScienceQA and 20Minuten).
# Measured on the 2-core CPU (1 thread, CPU seconds, seqlora): a training step of 4 x 302 tokens (20Minuten) 12.8 s,
# of 4 x 43 (NumGLUE-ds) 1.8 s; 20 test inputs of MeetingBank 37.8 s, Py150 34.5 s, C-STANCE 21.9 s (3 new tokens
# after 226-token prompts), NumGLUE-cm 4.3 s. So ~11 min of training and ~13 min of evaluation (36 task
# evaluations) per continual run, about 3 CPU hours for the 8 rows: 1.5-2 h of wall time with --jobs 2.
TRACE_SMALL = dict(order="1", max_train_per_task=48, max_test_per_task=20, max_input_length=256,
                   max_target_length=48, epochs=1, batch_size=4, eval_batch_size=16)
TRACE_METHODS = ["single", "seqlora", "inclora", "olora", "amlora", "sapt-lora", "seqlora+replay", "mtl"]

# SAPT's pseudo-input generator trains 80 epochs over the task's inputs in the paper (thousands of inputs); at the
# small preset's 96 / 24 inputs per task that is 480 / 160 generator steps per task, more than the task's own 24 / 6
# steps, and the generator alone would take most of a SAPT row's time. The small preset trains it for 10 epochs
# (60 / 20 steps per task), still 2.5-3x the task's own steps; `--preset paper` runs keep the 80 epochs.
SMALL_METHOD_OPTIONS = {"sapt-lora": {"generator_epochs": 10}, "sapt-prompt": {"generator_epochs": 10}}

PRESETS = {
    "small": {"model": "smollm2-135m", "seed": 42,
              "benchmarks": {"standard": STANDARD_SMALL, "superni": SUPERNI_SMALL},
              "method_options": SMALL_METHOD_OPTIONS},
    "base": {"model": "smollm2-135m", "seed": 42,
             "benchmarks": {"standard": STANDARD_BASE, "superni": SUPERNI_BASE}},
    # Longer training for the methods whose selection needs many steps (SAPT): 8x the base preset's steps per task
    # on standard (1000 examples, 2 epochs = 250 steps per task). Sized for a GPU, not for the 2-core CPU.
    "medium": {"model": "smollm2-135m", "seed": 42,
               "benchmarks": {"standard": {**STANDARD_BASE, "max_train_per_task": 1000, "epochs": 2}}},
    # TRACE at the small preset's scale, with the methods of its table (a preset's "methods" are its default rows)
    "trace": {"model": "smollm2-135m", "seed": 42, "benchmarks": {"trace": TRACE_SMALL}, "methods": TRACE_METHODS},
}

# Published numbers for reference (different backbones and full data: T5-large). AP (F.Ra). A benchmark without
# entries (trace: the TRACE paper reports LLaMA-2 and other 7B+ chat models) gets no paper column.
PAPER = {
    "standard": {  # order 1, AM-LoRA paper (T5-large)
        "seqlora": "44.6 (SinLoRA)", "inclora": "66.0", "olora": "75.4", "amlora": "78.1", "mtl": "80.0",
    },
    "superni": {  # order 1, SAPT paper (T5-large), AP / F.Ra
        "seqlora": "6.43 / 33.39", "olora": "25.89 / 26.37", "sapt-lora": "51.54 / 0.91",
        "sapt-prompt": "41.11 / 1.32", "sapt-lora (no ARM)": "11.12 / 42.83",
        "gainlora": "≈46-48 / ≈2.3-2.6",  # GainLoRA (InfLoRA base) as quoted approximately by issue 22
    },
}


# Named variants: a registered method run with non-default options (the papers' ablation rows).
VARIANTS = {
    "single-full": ("single", {"single": {"pet": "full"}}),  # FWT reference of the full fine-tuning rows
    "single-prompt": ("single", {"single": {"pet": "prompt"}}),  # FWT reference of the soft-prompt rows
    "sapt-lora-noarm": ("sapt-lora", {"sapt-lora": {"arm": "none"}}),  # SAPT Table 4 "w/o ARM"
    "gainlora-olora": ("gainlora", {"gainlora": {"base": "olora"}}),  # GainLoRA's O-LoRA base (`gainlora`: InfLoRA)
}
PAPER_NAMES = {"sapt-lora-noarm": "sapt-lora (no ARM)"}
# Each row's FWT is measured against one task trained alone with the same kind of block (Method.pet_kind; the loop
# refuses a reference of another kind): the `single` row of that kind.
REFERENCES = {"lora": "single", "full": "single-full", "prompt": "single-prompt"}


def method_options(method: str, preset: dict) -> tuple[str, dict]:
    """(method spec, its options) of a row: a variant's method with the preset's options below the variant's own."""
    spec, variant = VARIANTS.get(method, (method, {}))
    defaults = preset.get("method_options", {})
    return spec, {part: {**defaults.get(part, {}), **variant.get(part, {})}
                  for part in spec.split("+") if part in defaults or part in variant}


def reference_of(method: str, preset: dict) -> str | None:
    """The row whose run is ``method``'s FWT reference (None for the references themselves)."""
    from continual_lm.methods.base import build_method

    if method in REFERENCES.values():
        return None
    spec, options = method_options(method, preset)
    return REFERENCES[build_method(RunConfig(method=spec, method_options=options)).pet_kind]


def default_methods() -> list[str]:
    """Every registered base method, and each plugin on top of seqlora (MIGU also on inclora)."""
    bases = [name for name in METHODS if not method_class(name).is_plugin]
    plugins = [name for name in METHODS if method_class(name).is_plugin]
    specs = list(REFERENCES.values()) + [b for b in bases if b != "single"]
    for plugin in plugins:
        specs.append(f"seqlora+{plugin}")
        if plugin == "migu":
            specs.append("inclora+migu")
    return specs + [v for v in VARIANTS if v not in specs]


def run_config(benchmark: str, method: str, settings: dict, preset: dict, root: Path, data_dir: str | None,
               mixed_precision: str = "no") -> RunConfig:
    """The configuration of one method's run on a benchmark of a preset (a variant: its method with options)."""
    spec, options = method_options(method, preset)
    reference = reference_of(method, preset)
    reference_dir = root / benchmark / reference if reference else None
    reference_done = reference_dir is not None and (reference_dir / "results.json").exists()
    return RunConfig(benchmark=benchmark, method=spec, model=preset["model"], seed=preset["seed"],
                     method_options=options, data_dir=data_dir, keep_checkpoints="last",
                     output_dir=str(root / benchmark / method), mixed_precision=mixed_precision,
                     single_task_from=str(reference_dir) if reference_done else None, **settings)


def is_finished(benchmark: str, method: str, preset: dict, root: Path, data_dir: str | None,
                mixed_precision: str = "no") -> bool:
    """A finished run of this configuration is there (a finished run of another configuration is an error)."""
    from continual_lm.train.assemble import same_configuration

    out = root / benchmark / method
    if not (out / "results.json").exists():
        return False
    config = run_config(benchmark, method, preset["benchmarks"][benchmark], preset, root, data_dir, mixed_precision)
    same_configuration(config, out, resume=False, how_to_replace=f"remove {out} to run it again")
    return True


def run_one(benchmark: str, method: str, settings: dict, preset: dict, root: Path, data_dir: str | None,
            mixed_precision: str = "no", log: bool = False) -> dict:
    """Run (or resume, or skip if finished) one method of a benchmark; with ``log``, its output goes to
    <benchmark>/<method>.log instead of the console (several runs at a time) and progress bars are off."""
    from continual_lm.train.assemble import prepare_run

    out = root / benchmark / method
    config = run_config(benchmark, method, settings, preset, root, data_dir, mixed_precision)
    if log:
        config.progress = False
    # reused or resumed only for this configuration
    prepared = prepare_run(config, output_dir=out, reuse=True, how_to_replace=f"remove {out} to run it again")
    if prepared.action == "reuse":
        print(f"[reproduce] {benchmark}/{method}: finished earlier", flush=True)
        return prepared.results
    print(f"[reproduce] {benchmark}/{method}: {'resuming' if prepared.action == 'resume' else 'starting'}", flush=True)
    if not log:
        return prepared.start()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{method}.log", "a") as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):
        results = prepared.start()
    print(f"[reproduce] {benchmark}/{method}: done, AP {results['metrics']['AP']:.2f}", flush=True)
    return results


def seqlora_runner(preset_name: str, benchmark: str, data_dir: str):
    """A seqlora runner on one benchmark of a preset (its settings, model and seed) with the first task's LoRA added
    (B = 0, so the model still decodes like the base model): what the bench scripts time. Writes nothing."""
    from continual_lm.train.assemble import build_runner

    preset = PRESETS[preset_name]
    config = RunConfig(benchmark=benchmark, method="seqlora", model=preset["model"], seed=preset["seed"],
                       data_dir=data_dir, progress=False, **preset["benchmarks"][benchmark])
    runner = build_runner(config, Path("/nonexistent"))
    runner.method.before_task(runner.model, 0, runner.tasks[0])
    return runner


def _start_worker(threads: int) -> None:
    from continual_lm.threads import apply_threads

    apply_threads(threads)


def run_all(queue: list[tuple], run_args, jobs: int, threads: int, on_finish, run=None, needs=None) -> None:
    """Run every item of ``queue`` as ``run(*run_args(*item), log=jobs > 1)`` (``run``: ``run_one`` unless given, a
    module-level function so that worker processes can import it), ``jobs`` at a time. ``needs(item)``: the item
    that must finish first (a row's FWT reference), or None. ``on_finish(*item)`` is called after every run.
    The harness queues (benchmark, method) items; bench/claims.py (row, seed) items."""
    remaining = list(queue)
    run = run or run_one

    def ready(item):
        return needs is None or needs(item) not in remaining

    if jobs == 1:
        for item in sorted(remaining, key=lambda item: not ready(item)):
            run(*run_args(*item))
            on_finish(*item)
        return
    pending, running = list(remaining), {}
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by each worker's torch at import
    set_openmp_defaults()  # the workers' OpenMP threads sleep while they wait (unless the user chose)
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(threads,)) as pool:
            while pending or running:
                for item in [i for i in pending if ready(i)][:jobs - len(running)]:
                    pending.remove(item)
                    running[pool.submit(run, *run_args(*item), log=True)] = item
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    future.result()  # a failed run stops the harness with its error (its log has the details)
                    remaining.remove(item)
                    on_finish(*item)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def finished_runs(root: Path, benchmark: str) -> list[tuple[str, dict]]:
    """(row name, results) of every finished run of a benchmark, in the harness' method order."""
    found = {d.name: json.loads((d / "results.json").read_text())
             for d in sorted((root / benchmark).glob("*")) if (d / "results.json").exists()}
    order = default_methods()
    return sorted(found.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))


def read_invocations(root: Path) -> list[dict]:
    path = root / "invocations.json"
    return json.loads(path.read_text()) if path.exists() else []


def record_invocation(root: Path, record: dict) -> None:
    """Add ``record`` to invocations.json, or replace the earlier record with the same ``started``: the record is
    written when an invocation starts and again after each of its runs, so one that is killed still counts
    (``record["id"]`` tells the records apart)."""
    earlier = [r for r in read_invocations(root) if r.get("id") != record["id"]]
    atomic_write_json(root / "invocations.json", earlier + [record])


def results_markdown(preset_name: str, tables: dict[str, list[tuple[str, dict]]],
                     invocations: list[dict] = ()) -> str:
    def fmt(v):
        return "–" if v is None else f"{v:.2f}"

    lines = [f"# Reproduction at small scale (`bench/reproduce.py --preset {preset_name}`)", "",
             "Generated by the script; numbers are from the runs under `bench/runs/`. Paper numbers use other "
             "backbones (T5-large) and full data, so only the ordering is comparable. Train and eval times are the "
             "run's own wall time on the row's device (`cpu (N threads)` or a GPU); runs that shared the machine "
             "(`--jobs`) took longer each than alone. Compare speed in bench/SPEED.md, not here. FWT is measured against "
             "the reference row that trains the same kind of block alone on each task: `single` (LoRA) for the LoRA "
             "rows, `single-full` for full fine-tuning, `single-prompt` (one 10-token soft prompt) for the prompt "
             "methods.", ""]
    for benchmark, results in tables.items():
        settings = PRESETS[preset_name]["benchmarks"][benchmark]
        total = sum(r["timing"]["train_s"] + r["timing"]["eval_s"] for _, r in results)
        papers = PAPER.get(benchmark)
        lines += [f"## {benchmark}" + (f" order {settings['order']}" if settings.get('order') else ""), "",
                  f"Settings: {json.dumps(settings)} · model {PRESETS[preset_name]['model']} · "
                  f"{len(results)} runs, {total / 3600:.2f} h of run time in all"
                  + (f" · method options {json.dumps(PRESETS[preset_name]['method_options'])}"
                     if PRESETS[preset_name].get("method_options") else ""), "",
                  "| method | AP | F.Ra | FWT | BWT | train (min) | eval (min) | device |"
                  + (" paper (T5-large) |" if papers else ""),
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |" + (" --- |" if papers else "")]
        for name, r in results:
            m, timing = r["metrics"], r["timing"]
            paper = f" {papers.get(PAPER_NAMES.get(name, name), '')} |" if papers else ""
            lines.append(f"| {name} | {fmt(m['AP'])} | {fmt(m['F.Ra'])} | {fmt(m['FWT'])} | {fmt(m['BWT'])} | "
                         f"{timing['train_s'] / 60:.1f} | {timing['eval_s'] / 60:.1f} | {r.get('device', 'cpu')} |"
                         f"{paper}")
        lines.append("")
    if invocations:
        lines += invocations_markdown(invocations, ["Wall time of each invocation of the script that ran something "
                                                    "(from `bench/runs/<preset>/invocations.json`).", ""])
    return "\n".join(lines)


def invocations_markdown(invocations: list[dict], preamble: list[str] = ()) -> list[str]:
    """The "Invocations" section: one row per recorded invocation (invocations.json), an interrupted one marked."""
    lines = ["## Invocations", "", *preamble, "| started | runs | jobs | threads per run | CPU count | wall time (h) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for inv in invocations:
        finished = len(inv.get("finished", inv["runs"]))
        runs = f"{finished}" if finished == len(inv["runs"]) else f"{finished} of {len(inv['runs'])} (interrupted)"
        lines.append(f"| {inv['started']} | {runs} | {inv['jobs']} | {inv.get('threads') or '–'} | "
                     f"{inv.get('cpu_count', '–')} | {inv['wall_s'] / 3600:.2f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--benchmarks", nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--data-dir", default=os.environ.get("CONTINUAL_LM_DATA", str(HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--runs-dir", default=str(HERE / "runs"))
    parser.add_argument("--output", default=None,
                        help="default: bench/RESULTS.md for --preset small, bench/RESULTS-<preset>.md for the others")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"],
                        help="accelerate mixed precision for every run (default: fp32 as in the committed rows)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: usable cores / jobs)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--table-only", action="store_true", help="rewrite RESULTS.md from the finished runs and exit")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.output is None:
        args.output = str(HERE / ("RESULTS.md" if args.preset == "small" else f"RESULTS-{args.preset}.md"))
    benchmarks = args.benchmarks or list(preset["benchmarks"])
    unknown = [b for b in benchmarks if b not in preset["benchmarks"]]
    if unknown:
        parser.error(f"--benchmarks: preset {args.preset} has {', '.join(preset['benchmarks'])}, not {', '.join(unknown)}")
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--jobs and --threads must be integers >= 1")
    threads = args.threads or max(1, usable_cores() // args.jobs)
    if args.jobs == 1:  # the runs go in this process
        apply_threads(threads)
    methods = args.methods or preset.get("methods") or default_methods()
    if args.dry_run:
        for b in benchmarks:
            print(f"{b}: {', '.join(methods)}")
        return 0
    root = Path(args.runs_dir) / args.preset

    def write_table():
        tables = {b: runs for b in preset["benchmarks"] if (runs := finished_runs(root, b))}
        atomic_write_text(args.output, results_markdown(args.preset, tables, read_invocations(root)) + "\n")

    if args.table_only:
        write_table()
        return 0
    queue = []  # method-major, so that both benchmarks' long runs (lfpt5, ewc) are not all left for the end
    for m in methods:
        for b in benchmarks:
            if is_finished(b, m, preset, root, args.data_dir, args.mixed_precision):
                print(f"[reproduce] {b}/{m}: finished earlier")
            else:
                queue.append((b, m))
    print(f"[reproduce] {len(queue)} runs to do, {args.jobs} at a time" + (f", {threads} threads each" if args.jobs > 1 else ""))
    start, started_at = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
    record = {"id": uuid.uuid4().hex, "started": started_at, "wall_s": 0.0, "jobs": args.jobs, "threads": threads,
              "runs": [f"{b}/{m}" for b, m in queue], "finished": [],
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}

    def finished(benchmark, method):
        record["finished"].append(f"{benchmark}/{method}")
        record["wall_s"] = round(time.perf_counter() - start, 1)
        record_invocation(root, record)
        write_table()

    def run_args(benchmark, method):
        return benchmark, method, preset["benchmarks"][benchmark], preset, root, args.data_dir, args.mixed_precision

    if queue:
        record_invocation(root, record)
    references = {item: (item[0], reference_of(item[1], preset)) for item in queue}
    run_all(queue, run_args, args.jobs, threads, on_finish=finished, needs=references.get)
    wall_s = time.perf_counter() - start
    print(f"[reproduce] done in {wall_s / 60:.1f} min -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
