"""One-command small-scale reproduction: every registered method on one fixed protocol, then bench/RESULTS.md.

    python bench/reproduce.py --preset small [--benchmarks standard superni] [--methods seqlora inclora ...]
                              [--data-dir ../shared/data] [--mixed-precision bf16] [--dry-run] [--table-only]

Presets: `small` (sized for a 2-core CPU; writes bench/RESULTS.md) and `medium` (standard order 1 with 8x the
training steps per task, for a GPU; writes bench/RESULTS-medium.md).

Runs go to bench/runs/<preset>/<benchmark>/<method>/ (checkpoints: last phase only). Finished runs are skipped,
interrupted ones resumed, so the script can be stopped and started again at any time. The `single` reference runs
first on each benchmark and gives every other run its FWT reference. A method may also be a named variant of
VARIANTS (a method with options, e.g. `sapt-lora-noarm`). RESULTS.md always lists every finished run found under
the runs directory (so several invocations, e.g. one per method, build one table); `--table-only` just rewrites it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from continual_lm.config import RunConfig  # noqa: E402
from continual_lm.io_utils import atomic_write_text  # noqa: E402
from continual_lm.methods.registry import METHODS, method_class  # noqa: E402

# 4 tasks; 256 train / 50 test examples per task (32 steps per task); 13 min for seqlora on an idle 2-core machine
STANDARD_SMALL = dict(order="1", max_train_per_task=256, max_test_per_task=50, max_input_length=128,
                      max_target_length=8, epochs=1, batch_size=8, eval_batch_size=16)
# 15 tasks; 48 train / 8 test examples per task (6 steps per task); generation up to 24 new tokens; 16 min for seqlora
SUPERNI_SMALL = dict(order="1", max_train_per_task=48, max_test_per_task=8, max_input_length=160,
                     max_target_length=24, epochs=1, batch_size=8, eval_batch_size=16)

PRESETS = {
    "small": {"model": "smollm2-135m", "seed": 42,
              "benchmarks": {"standard": STANDARD_SMALL, "superni": SUPERNI_SMALL}},
    # Longer training for the methods whose selection needs many steps (SAPT): 8x the small preset's steps per task
    # on standard (1000 examples, 2 epochs = 250 steps per task). Sized for a GPU, not for the 2-core CPU.
    "medium": {"model": "smollm2-135m", "seed": 42,
               "benchmarks": {"standard": {**STANDARD_SMALL, "max_train_per_task": 1000, "epochs": 2}}},
}

# Published numbers for reference (different backbones and full data: T5-large unless noted). AP (F.Ra).
PAPER = {
    "standard": {  # order 1, AM-LoRA paper (T5-large)
        "seqlora": "44.6 (SinLoRA)", "inclora": "66.0", "olora": "75.4", "amlora": "78.1", "mtl": "80.0",
    },
    "superni": {  # order 1, SAPT paper (T5-large), AP / F.Ra
        "seqlora": "6.43 / 33.39", "olora": "25.89 / 26.37", "sapt-lora": "51.54 / 0.91",
        "sapt-prompt": "41.11 / 1.32", "sapt-lora (no ARM)": "11.12 / 42.83",
    },
}


# Named variants: a registered method run with non-default options (the papers' ablation rows).
VARIANTS = {
    "sapt-lora-noarm": ("sapt-lora", {"sapt-lora": {"arm": "none"}}),  # SAPT Table 4 "w/o ARM"
}
PAPER_NAMES = {"sapt-lora-noarm": "sapt-lora (no ARM)"}


def default_methods() -> list[str]:
    """Every registered base method, and each plugin on top of seqlora (MIGU also on inclora)."""
    bases = [name for name in METHODS if not method_class(name).is_plugin]
    plugins = [name for name in METHODS if method_class(name).is_plugin]
    specs = ["single"] + [b for b in bases if b != "single"]
    for plugin in plugins:
        specs.append(f"seqlora+{plugin}")
        if plugin == "migu":
            specs.append("inclora+migu")
    return specs + list(VARIANTS)


def run_one(benchmark: str, method: str, settings: dict, preset: dict, root: Path, data_dir: str | None,
            single_dir: Path | None, mixed_precision: str = "no") -> dict:
    from continual_lm.train.loop import run

    out = root / benchmark / method
    if (out / "results.json").exists():
        print(f"[reproduce] {benchmark}/{method}: finished earlier")
        return json.loads((out / "results.json").read_text())
    spec, options = VARIANTS.get(method, (method, {}))
    config = RunConfig(benchmark=benchmark, method=spec, model=preset["model"], seed=preset["seed"],
                       method_options=options, data_dir=data_dir, keep_checkpoints="last", output_dir=str(out),
                       mixed_precision=mixed_precision,
                       single_task_from=str(single_dir) if single_dir and method != "single" else None, **settings)
    resume = (out / "config.yaml").exists()
    print(f"[reproduce] {benchmark}/{method}: {'resuming' if resume else 'starting'}", flush=True)
    return run(config, output_dir=out, resume=resume, overwrite=not resume)


def finished_runs(root: Path, benchmark: str) -> list[tuple[str, dict]]:
    """(row name, results) of every finished run of a benchmark, in the harness' method order."""
    found = {d.name: json.loads((d / "results.json").read_text())
             for d in sorted((root / benchmark).glob("*")) if (d / "results.json").exists()}
    order = default_methods()
    return sorted(found.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))


def results_markdown(preset_name: str, tables: dict[str, list[tuple[str, dict]]]) -> str:
    def fmt(v):
        return "–" if v is None else f"{v:.2f}"

    lines = [f"# Small-scale reproduction (`bench/reproduce.py --preset {preset_name}`)", "",
             "Generated by the script; numbers are from the runs under `bench/runs/`. Paper numbers use other "
             "backbones (T5-large) and full data, so only the ordering is comparable. Train time is wall time on "
             "the row's device (a shared 2-core CPU machine, where rows ran under different loads and thread "
             "counts, or a GPU); compare speed in bench/SPEED.md, not here.", ""]
    for benchmark, results in tables.items():
        settings = PRESETS[preset_name]["benchmarks"][benchmark]
        lines += [f"## {benchmark}" + (f" order {settings['order']}" if settings.get('order') else ""), "",
                  f"Settings: {json.dumps(settings)} · model {PRESETS[preset_name]['model']}", "",
                  "| method | AP | F.Ra | FWT | BWT | train time (min) | device | paper (T5-large) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for name, r in results:
            m = r["metrics"]
            paper = PAPER.get(benchmark, {}).get(PAPER_NAMES.get(name, name), "")
            lines.append(f"| {name} | {fmt(m['AP'])} | {fmt(m['F.Ra'])} | {fmt(m['FWT'])} | {fmt(m['BWT'])} | "
                         f"{r['timing']['train_s'] / 60:.1f} | {r.get('device', 'cpu')} | {paper} |")
        lines.append("")
    return "\n".join(lines)


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
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--table-only", action="store_true", help="rewrite RESULTS.md from the finished runs and exit")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.output is None:
        args.output = str(HERE / ("RESULTS.md" if args.preset == "small" else f"RESULTS-{args.preset}.md"))
    benchmarks = args.benchmarks or list(preset["benchmarks"])
    methods = args.methods or default_methods()
    if args.dry_run:
        for b in benchmarks:
            print(f"{b}: {', '.join(methods)}")
        return 0
    root = Path(args.runs_dir) / args.preset

    def write_table():
        tables = {b: finished_runs(root, b) for b in preset["benchmarks"] if finished_runs(root, b)}
        atomic_write_text(args.output, results_markdown(args.preset, tables) + "\n")

    if args.table_only:
        write_table()
        return 0
    start = time.perf_counter()
    for benchmark in benchmarks:
        settings = preset["benchmarks"][benchmark]
        single_dir = root / benchmark / "single"
        for method in (["single"] if "single" in methods else []) + [m for m in methods if m != "single"]:
            run_one(benchmark, method, settings, preset, root, args.data_dir,
                    single_dir if (single_dir / "results.json").exists() else None, args.mixed_precision)
            write_table()
    print(f"[reproduce] done in {(time.perf_counter() - start) / 60:.1f} min -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
