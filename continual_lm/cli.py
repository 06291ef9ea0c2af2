"""The `continual-lm` command: demo | run | report | list | predict | export | merge | analyze | plan |
accelerate-config."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from .errors import ContinualLMError

RUN_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("benchmark", dict(help="standard | long | superni | trace | demo | custom (see `continual-lm list`)")),
    ("order", dict(nargs="+", help="task order of the benchmark, e.g. 1 (standard), 4 (long), sapt4 (alias); "
                                   "several orders run a sweep")),
    ("tasks", dict(nargs="+", help="explicit task sequence (names of the benchmark's tasks), overriding --order")),
    ("stream_file", dict(help="YAML describing a custom stream (with --benchmark custom)")),
    ("data_dir", dict(help="folder holding CL_Benchmark/, SuperNI/ and/or TRACE/")),
    ("method", dict(help="method, optionally with plugins: seqlora, inclora, inclora+migu, ... (`continual-lm list`)")),
    ("model", dict(help="smollm2-135m, tiny-random-llama, tiny-random-t5, tiny-random-bert, a local HF "
                        "folder, a .gguf file, or a hub id")),
    ("seed", dict(type=int, help="seed of subsampling, initialisation and training")),
    ("max_train_per_task", dict(type=int, help="seeded subsample of each task's training set")),
    ("max_test_per_task", dict(type=int, help="seeded subsample of each task's test set")),
    ("max_train_per_class", dict(type=int)),
    ("max_test_per_class", dict(type=int)),
    ("max_input_length", dict(type=int, help="prompt tokens (the example's input text is shortened first)")),
    ("max_target_length", dict(type=int, help="target tokens for training and new tokens for generation")),
    ("prompt_task_name", dict(action=argparse.BooleanOptionalAction, help="put the task name into prompts (refused "
                              "for methods that use no task id at test time, unless --allow-task-name-leak)")),
    ("allow_task_name_leak", dict(action=argparse.BooleanOptionalAction,
                                  help="allow --prompt-task-name for such a method (a leak experiment; recorded)")),
    ("mlm_probability", dict(type=float, help="masked LM share of corpus tokens (encoder-only models)")),
    ("preset", dict(help="paper: the papers' hyper-parameters for this method, benchmark and model family "
                         "(`continual-lm list`); the options you give win")),
    ("epochs", dict(type=int)),
    ("lr", dict(type=float, help="learning rate")),
    ("batch_size", dict(type=int, help="per-process training batch size")),
    ("eval_batch_size", dict(type=int)),
    ("group_by_length", dict(action=argparse.BooleanOptionalAction, help="training batches of examples of similar "
                             "length: less padding, but other batches and other results (default off: plain shuffled "
                             "batches, as the papers train; bench/group_by_length.md)")),
    ("grad_accum", dict(type=int, help="gradient accumulation steps")),
    ("scheduler", dict(help="constant | constant_with_warmup | linear | cosine")),
    ("warmup_ratio", dict(type=float)),
    ("weight_decay", dict(type=float)),
    ("max_grad_norm", dict(type=float)),
    ("eval_all_tasks", dict(action=argparse.BooleanOptionalAction, help="also evaluate tasks not trained yet")),
    ("eval_every", dict(type=int, help="evaluate after every K-th phase and the last (default 1); the other matrix "
                                       "rows stay null, and metrics that need them are null (results.json "
                                       "metrics_notes)")),
    ("eval_final_only", dict(action=argparse.BooleanOptionalAction,
                             help="evaluate after the last phase only (the final row: AP)")),
    ("single_task_from", dict(help="run dir of a `single` run whose scores are the FWT reference")),
    ("unseen_tasks", dict(nargs="+", help="tasks never trained on, evaluated zero-shot after the stream and on the "
                                          "base model: NAME (same benchmark) or BENCHMARK:NAME")),
    ("report_to", dict(help="none | tensorboard | wandb: configuration, loss, lr, per-task scores, CL metrics "
                            "(pip install 'continual-lm[wandb]' for wandb)")),
    ("tracker_project", dict(help="the trackers' project")),
    ("tracker_run_name", dict(help="the run's name in the trackers")),
    ("general_tasks", dict(nargs="+", help="lm-eval tasks (hellaswag, winogrande, arc_challenge, or local ones from "
                                           "--general-task-dir) scored on the base model and the final model; "
                                           "needs pip install 'continual-lm[general]'")),
    ("general_task_dir", dict(help="folder of lm-eval task YAMLs for --general-tasks")),
    ("general_limit", dict(type=int, help="examples per --general-tasks task")),
    ("dtype", dict(help="float32 | bfloat16 | float16 weights")),
    ("mixed_precision", dict(help="no | bf16 | fp16 (through accelerate)")),
    ("gradient_checkpointing", dict(action=argparse.BooleanOptionalAction)),
    ("keep_checkpoints", dict(help="all: every phase's checkpoint (each refers to the tensors earlier ones "
                                   "stored) | last: only the latest, pruned once the next phase is evaluated")),
    ("trust_remote_code", dict(action=argparse.BooleanOptionalAction, help="only for models you trust")),
    ("progress", dict(action=argparse.BooleanOptionalAction, help="progress bars; one log line per phase is printed "
                                                                  "either way")),
    ("threads", dict(type=int, help="torch CPU threads")),
]
LORA_OPTIONS = [("r", int, "LoRA rank"), ("alpha", float, "LoRA scaling: the update is alpha / r * B A x"),
                ("dropout", float, "dropout on the LoRA input")]
# What an option whose default is None uses instead, for --help.
NONE_MEANS = {
    "order": "the benchmark's first order", "tasks": "the order's tasks", "stream_file": "none",
    "data_dir": "env CONTINUAL_LM_DATA", "max_train_per_task": "all", "max_test_per_task": "all",
    "max_train_per_class": "all", "max_test_per_class": "all", "preset": "none: our defaults",
    "lr": "computed: 1e-3 for PET methods, 2e-5 for full fine-tuning", "single_task_from": "none: FWT is null",
    "unseen_tasks": "none", "general_tasks": "none", "general_task_dir": "none", "general_limit": "all",
    "lora.targets": "computed: the model type's query and value projections",
    "tracker_project": "continual_lm", "tracker_run_name": "the run directory's name",
    "threads": "$CONTINUAL_LM_THREADS, $OMP_NUM_THREADS, else the cores this process may use / processes on this "
               "machine",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flags(name: str) -> list[str]:
    """The flag of option ``name`` ("lr", "lora.targets") and those of its aliases (config.ALIASES)."""
    from .config import ALIASES

    flags = [_flag(name.replace(".", "_"))]
    for alias, ours in ALIASES.items():
        if ours == name and "." not in alias and _flag(alias) not in flags:
            flags.append(_flag(alias))
    return flags


def _default_text(value: Any, none_means: str | None = None) -> str:
    if value is None:
        return none_means or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _with_default(text: str | None, value: Any, none_means: str | None = None) -> str:
    return f"{text + ' ' if text else ''}(default: {_default_text(value, none_means)})"


class _OneName(argparse.Action):
    """Stores an option that has several names (--lr, --learning-rate): giving it under two of them is an error
    naming both, instead of argparse's silent "the last one wins"."""

    def __call__(self, parser, namespace, values, option_string=None):
        named = vars(namespace).setdefault("_named", {})
        earlier = named.setdefault(self.dest, option_string)
        if earlier != option_string:
            parser.error(f"{earlier} and {option_string} are two names of one option: give it once")
        setattr(namespace, self.dest, values)


def _method_option_specs():
    """(method, field, argparse kwargs) for every registered method's Options dataclass."""
    from .methods.registry import METHODS, method_class

    for method_name in METHODS:
        cls = method_class(method_name)
        hints = typing.get_type_hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            kind = hints[f.name]
            args = typing.get_args(kind)
            if kind is bool:
                kwargs = dict(action=argparse.BooleanOptionalAction)
            elif typing.get_origin(kind) is list or any(typing.get_origin(a) is list for a in args):
                inner = next((typing.get_args(a)[0] for a in (kind, *args) if typing.get_origin(a) is list), str)
                kwargs = dict(nargs="+", type=inner, metavar=f.name.upper())
            else:
                base = next((a for a in args if a is not type(None)), kind) if args else kind
                kwargs = dict(type=base if base in (int, float, str) else str, metavar=f.name.upper())
            kwargs["help"] = _with_default(f"{method_name}: {f.name}", option_default(f))
            yield method_name, f.name, kwargs


def option_default(f: dataclasses.Field) -> Any:
    """A method option's default for --help; for None, what it means (the field's ``metadata["none_means"]``)."""
    if f.default is dataclasses.MISSING:
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else "required"
    if f.default is None:
        return "computed: " + f.metadata["none_means"] if "none_means" in f.metadata else None
    return f.default


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import LoRAConfig, RunConfig

    defaults, lora_defaults = RunConfig(), LoRAConfig()
    parser.add_argument("--config", metavar="YAML", help="YAML run configuration; command-line options override it "
                        "(default: none)")
    parser.add_argument("--output-dir", metavar="DIR", help="run directory (default: "
                        "runs/<benchmark>-<order>-<method>-<model>-s<seed>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory "
                        "(default: off)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="run every seed (x every --order) into "
                        "its own directory under --output-dir; `continual-lm report DIR` then shows mean ± std "
                        "(default: --seed only)")
    for name, kwargs in RUN_OPTIONS:
        kwargs = dict(kwargs)
        flags = _flags(name)
        if len(flags) > 1:
            kwargs["action"] = _OneName
        if kwargs.get("action") is not argparse.BooleanOptionalAction:
            kwargs.setdefault("metavar", name.upper())
        kwargs["help"] = _with_default(kwargs.get("help"), getattr(defaults, name), NONE_MEANS.get(name))
        parser.add_argument(*flags, dest=name, default=None, **kwargs)
    for name, kind, text in LORA_OPTIONS:
        flags = _flags(f"lora.{name}")
        parser.add_argument(*flags, dest=f"lora_{name}", type=kind, default=None, metavar=name.upper(),
                            action=_OneName if len(flags) > 1 else "store",
                            help=_with_default(text, getattr(lora_defaults, name)))
    parser.add_argument(*_flags("lora.targets"), dest="lora_targets", nargs="+", default=None, metavar="MODULE",
                        action=_OneName, help=_with_default(
                            "module-name suffixes (q_proj,v_proj), re:REGEX, or all-linear (peft's word: every linear "
                            "layer but the output head) to adapt", None, NONE_MEANS["lora.targets"]))
    group = parser.add_argument_group("method options (YAML: method_options: {METHOD: {OPTION: value}})")
    for method_name, field_name, kwargs in _method_option_specs():
        group.add_argument(f"--{method_name}-{field_name.replace('_', '-')}", dest=f"m__{method_name}__{field_name}",
                           default=None, **kwargs)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options this command line gives (its --config file, then its flags), nested like RunConfig.to_dict()."""
    from .config import RunConfig, canonical_options, read_yaml_mapping

    data: dict[str, Any] = {}
    if args.config:
        RunConfig.from_yaml(args.config)  # its errors name the file
        data = canonical_options(read_yaml_mapping(args.config), args.config)  # only the keys it gives: a preset
        #                                                                        fills the others
    for name, _ in RUN_OPTIONS:
        value = getattr(args, name)
        if name == "order" and value is not None:
            value = value[0]  # several orders are a sweep (cmd_run); each child run gets one
        if value is not None:
            data[name] = value
    lora = dict(data.get("lora") or {})
    for name, _, _ in LORA_OPTIONS:
        if getattr(args, f"lora_{name}") is not None:
            lora[name] = getattr(args, f"lora_{name}")
    if args.lora_targets:
        lora["targets"] = [t for item in args.lora_targets for t in item.split(",") if t]
    if lora:
        data["lora"] = lora
    options = {k: dict(v) for k, v in (data.get("method_options") or {}).items()}
    for key, value in vars(args).items():
        if key.startswith("m__") and value is not None:
            _, method_name, field_name = key.split("__")
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            options.setdefault(method_name, {})[field_name] = value
    if options:
        data["method_options"] = options
    return data


def config_from_args(args: argparse.Namespace):
    from .config import RunConfig

    return RunConfig.from_dict(options_from_args(args), source="command line")


# ---- commands ------------------------------------------------------------------------------------------------
def _print_main(text: str) -> None:
    """Print once, from the main process, when launched as several processes (accelerate launch / torchrun)."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(text)


def cmd_run(args) -> int:
    from .eval.report import comparison_markdown
    from .train.assemble import prepare_run, resume_config

    if args.resume:
        if args.overwrite or args.seeds or (args.order and len(args.order) > 1):
            raise ContinualLMError("--resume continues one run: it cannot be combined with --overwrite, --seeds or "
                                   "several --order values")
        config = resume_config(args.resume, options_from_args(args))
        prepared = prepare_run(config, output_dir=args.resume, resume=True)
        results = prepared.start()
        _print_main(f"{comparison_markdown([results])}\n\nrun directory: {prepared.path}")
        return 0
    config = config_from_args(args)
    orders = args.order or [config.order]
    seeds = args.seeds or [config.seed]
    for name, values in (("--order", orders), ("--seeds", seeds)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ContinualLMError(f"{name}: {', '.join(repeated)} given more than once; each value is one run")
    if len(orders) * len(seeds) == 1:
        prepared = prepare_run(config, output_dir=args.output_dir, overwrite=args.overwrite)
        results = prepared.start()
        _print_main(f"{comparison_markdown([results])}\n\nrun directory: {prepared.path}")
        return 0
    return _sweep(config, orders, seeds, args)


def _sweep(config, orders: list, seeds: list[int], args) -> int:
    """Every (order, seed) into PARENT/order<o>-seed<s>. Finished children of the same configuration are reused,
    interrupted ones resumed; a child of another configuration is refused before anything runs. --overwrite
    replaces a sweep directory (one holding only runs), after the first child was fully checked."""
    import shutil

    from .eval.aggregate import aggregate_markdown
    from .eval.report import comparison_markdown
    from .train.assemble import prepare_run, same_configuration
    from .train.run_record import resolve_config
    from .data.stream import load_stream_for
    from .train.checkpoint import RunDir, sweep_contents

    parent = Path(args.output_dir or f"runs/sweep-{config.benchmark}-{config.method}").absolute()
    children = []
    for order in orders:
        for seed in seeds:
            child = parent / (f"order{order}-seed{seed}" if order is not None else f"seed{seed}")
            children.append((child, dataclasses.replace(config, order=order, seed=seed, output_dir=str(child))))
    if args.overwrite:
        found = sweep_contents(parent)
        if found.kind == "file":
            raise ContinualLMError(f"--output-dir {parent} is a file, not a directory")
        if found.kind == "other":
            raise ContinualLMError(f"--overwrite {parent}: refusing to delete it: it is not a continual_lm run or "
                                   f"sweep directory (it holds {', '.join(found.foreign[:6])}); remove it yourself or "
                                   f"choose another --output-dir")
        locked = [p for p in parent.iterdir() if RunDir(p).is_locked_by_another_process()] if found.kind == "run" \
            else []
        if locked:
            raise ContinualLMError(f"--overwrite {parent}: {locked[0]} is in use by another process")
        first = prepare_run(children[0][1], output_dir=children[0][0], overwrite=True)  # model, method, targets, data
        for _, child_config in children[1:]:
            load_stream_for(resolve_config(child_config))  # each order's data
        if found.kind == "run":
            for entry in parent.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
        prepared = [first]
    else:
        for child, child_config in children:  # another configuration in any child is refused before anything runs
            kind = RunDir(child).contents().kind
            if kind == "run":
                same_configuration(child_config, child, resume=False)
            elif kind in ("other", "file"):
                raise ContinualLMError(f"{child} exists and is not a continual_lm run; the sweep cannot write there")
        prepared = []
    all_results = []
    for index, (child, child_config) in enumerate(children):
        run_prepared = prepared[index] if index < len(prepared) else prepare_run(child_config, output_dir=child,
                                                                                reuse=True)
        label = {"reuse": "finished earlier, reused", "resume": "resuming"}.get(run_prepared.action, "running")
        print(f"[sweep] {child}: {label}")
        all_results.append(run_prepared.start())
    print(comparison_markdown(all_results))
    print()
    print(aggregate_markdown(all_results))
    print(f"\nsweep directory: {parent} (`continual-lm report {parent}` for the tables and the AP box plot)")
    return 0


def cmd_report(args) -> int:
    from .eval.aggregate import aggregate_markdown, is_repeated
    from .eval.comparison import default_output_dir, write_comparison
    from .eval.experiments import load_runs
    from .eval.report import comparison_markdown

    results = load_runs(args.runs)
    table = comparison_markdown(results)
    if is_repeated(results):
        table += "\n\n" + aggregate_markdown(results)
    print(table)
    out = Path(args.output) if args.output else default_output_dir(args.runs)
    written = write_comparison(results, out, args.formats)
    print(f"\ncomparison written to {out}: {', '.join(p.name for p in written)}")
    return 0


def cmd_list(args) -> int:
    from .data.benchmarks import list_benchmarks
    from .eval.report import PROTOCOL_LEGEND, protocol_flags
    from .methods.base import protocol
    from .methods.reference import PET_KINDS
    from .methods.registry import METHODS, method_class
    from .models.backbone import MODEL_ALIASES
    from .presets import preset_methods, preset_names

    print("Benchmarks (orders):")
    for name, orders in list_benchmarks().items():
        print(f"  {name:10s} {', '.join(orders) if orders else '(defined by --stream-file)'}")
    presets = {name: preset_methods(name) for name in preset_names()}
    print("\nMethods (compose plugins with '+', e.g. inclora+migu):")
    for name in METHODS:
        cls = method_class(name)
        extra = f"  [+{', +'.join(cls.composable_with)}]" if cls.composable_with else ""
        print(f"  {name:12s} {cls.description}{extra}")
        kind = cls.pet_kind if isinstance(cls.pet_kind, str) else f"{'|'.join(PET_KINDS)} (--{name}-pet)"
        with_preset = [p for p, methods in presets.items() if name in methods]
        details = [f"protocol: {protocol_flags(protocol(cls))}", f"trains: {'-' if cls.is_plugin else kind}",
                   f"presets: {', '.join(with_preset) or 'none'}"]
        print(f"  {'':12s} {'; '.join(details)}")
        if cls.differs_from_paper:
            print(f"  {'':12s} differs from paper: {cls.differs_from_paper}")
    print(f"\nProtocol: {PROTOCOL_LEGEND}")
    print("Presets (--preset NAME; values from continual_lm/presets/NAME/<method>.yaml, options you give win):")
    for name, methods in presets.items():
        print(f"  {name:10s} {', '.join(methods)}")
    print("\nModels (or a local folder, a .gguf file, a hub id):")
    for name, text in MODEL_ALIASES.items():
        print(f"  {name:18s} {text}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(output_dir=args.output_dir, model=args.model, methods=args.methods, seed=args.seed,
             fresh=args.fresh, progress=not args.no_progress)
    return 0


def cmd_predict(args) -> int:
    from .api import load_run
    from .data.formats import read_records
    from .io_utils import atomic_write_text

    records = read_records(args.input)
    loaded = load_run(args.run_dir, trust_remote_code=args.trust_remote_code, allow_unfinished=args.allow_unfinished)
    predictions = loaded.predict(records, batch_size=args.batch_size, progress=True)
    lines = [json.dumps({**r, "prediction": p}, ensure_ascii=False) for r, p in zip(records, predictions)]
    if args.output:
        atomic_write_text(args.output, "\n".join(lines) + "\n")
        print(f"{len(lines)} predictions -> {args.output}")
    else:
        print("\n".join(lines))
    return 0


def cmd_export(args) -> int:
    from .api import export_run, load_run

    if args.private and not args.push_to_hub:
        raise ContinualLMError("--private applies to the repository --push-to-hub creates; give --push-to-hub REPO")
    loaded = load_run(args.run_dir, trust_remote_code=args.trust_remote_code, allow_unfinished=args.allow_unfinished)
    summary = export_run(loaded, args.out, args.format, push_to_hub=args.push_to_hub, private=args.private)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_merge(args) -> int:
    from .api import load_run, merge_run

    loaded = load_run(args.run_dir, trust_remote_code=args.trust_remote_code, allow_unfinished=args.allow_unfinished)
    print(f"merged model -> {merge_run(loaded, args.out)}")
    return 0


def cmd_accelerate_config(args) -> int:
    from .accelerate_configs import config_names, config_path, config_summary, write_config

    if not args.name:
        print("accelerate launch configurations (continual-lm accelerate-config NAME writes NAME.yaml here):")
        for name in config_names():
            print(f"  {name:16s} {config_summary(name)}")
        return 0
    if args.path:
        print(config_path(args.name))
        return 0
    dest = write_config(args.name, args.output)
    print(f"{dest}\nlaunch with: accelerate launch --config_file {dest} -m continual_lm run ...")
    return 0


def cmd_analyze(args) -> int:
    from .analysis import run_analysis

    return run_analysis(args.analysis, args.rest)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    from .eval.comparison import FORMATS

    parser = argparse.ArgumentParser(prog="continual-lm", description="Continual learning of language models "
                                     "with parameter-efficient fine-tuning.")
    parser.add_argument("--version", action="version", version=f"continual-lm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a few methods on the embedded demo stream and print the comparison")
    demo.add_argument("--output-dir", metavar="DIR", default="continual_lm_demo",
                      help="parent of the demo's runs (default: continual_lm_demo)")
    demo.add_argument("--model", default="smollm2-135m", help="(default: smollm2-135m)")
    demo.add_argument("--methods", nargs="+", metavar="METHOD", default=None, help="(default: seqlora inclora)")
    demo.add_argument("--seed", type=int, default=42, help="(default: 42)")
    demo.add_argument("--fresh", action="store_true", help="discard earlier demo runs instead of reusing them "
                      "(default: off)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (default: off)")
    demo.set_defaults(func=cmd_demo)

    run_parser = sub.add_parser("run", help="train a method on a task stream and evaluate it",
                                usage="%(prog)s [--config YAML] [--resume RUN_DIR] [OPTION ...] (see below)")
    add_run_arguments(run_parser)
    run_parser.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="compare finished runs: markdown, CSV, LaTeX, a self-contained HTML report "
                                           "and figures, beside the runs")
    report.add_argument("runs", nargs="+", help="run directories, results.json files, or parents of runs")
    report.add_argument("--output", metavar="DIR", help="folder for the comparison's files (default: comparison/ in "
                                                         "the given directory, or in the folder holding all given paths)")
    report.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS, metavar="FORMAT",
                        help=f"which files to write: {' '.join(FORMATS)} (default: all)")
    report.set_defaults(func=cmd_report)

    listing = sub.add_parser("list", help="benchmarks, orders, methods and models")
    listing.set_defaults(func=cmd_list)

    predict = sub.add_parser("predict", help="task-agnostic predictions of a run's final model")
    predict.add_argument("run_dir")
    predict.add_argument("--input", required=True, help='JSON/JSONL records: {"prompt": ...} or {"input": ..., "task": ...}')
    predict.add_argument("--output", help="JSONL file (default: standard output)")
    predict.add_argument("--batch-size", type=int, default=None)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="every task's LoRA as a peft adapter folder (+ a combined one, or the "
                                           "own format for input-dependent mixtures) with a model card")
    export.add_argument("run_dir")
    export.add_argument("out")
    export.add_argument("--format", default="peft", help="peft (default)")
    export.add_argument("--push-to-hub", metavar="REPO", help="also upload the export folder to this Hugging Face Hub "
                                                               "model repository (created if absent; your HF token)")
    export.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    export.set_defaults(func=cmd_export)

    merge = sub.add_parser("merge", help="a standalone HF model folder with the LoRAs merged (static methods)")
    merge.add_argument("run_dir")
    merge.add_argument("out")
    merge.set_defaults(func=cmd_merge)
    for command in (predict, export, merge):
        command.add_argument("--trust-remote-code", action="store_true",
                             help="run the model's own code (only for models you trust; never taken from the run)")
        command.add_argument("--allow-unfinished", action="store_true",
                             help="use a run that has not finished: its model after the last trained phase")

    launch = sub.add_parser("accelerate-config", help="list or write the shipped accelerate launch configurations "
                            "(DDP, DeepSpeed ZeRO-2/3, FSDP2)")
    launch.add_argument("name", nargs="?", help="ddp_cpu | deepspeed_zero2 | deepspeed_zero3 | fsdp "
                        "(default: list them)")
    launch.add_argument("--output", metavar="PATH", help="file or folder to write (default: ./NAME.yaml; an existing "
                        "file is never replaced)")
    launch.add_argument("--path", action="store_true", help="print the installed file's path, write nothing "
                        "(default: off)")
    launch.set_defaults(func=cmd_accelerate_config)

    analyze = sub.add_parser("analyze", help="analyses of a finished run (e.g. migu-overlap); NAME --help for options")
    analyze.add_argument("analysis", help="name of the analysis")
    analyze.add_argument("rest", nargs=argparse.REMAINDER, help="RUN_DIR and the analysis' own options")
    analyze.set_defaults(func=cmd_analyze)

    from .plan import add_plan_arguments, cmd_plan

    plan = sub.add_parser("plan", help="parameter counts and a training-memory estimate, built without weights")
    add_plan_arguments(plan)
    plan.set_defaults(func=cmd_plan)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test or notebook may replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def show_progress_log() -> None:
    """Print the "continual_lm" logger's INFO lines (one per phase and per run: callbacks/progress.py) to stderr."""
    logger = logging.getLogger("continual_lm")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[continual_lm] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    from .threads import apply_threads, set_openmp_defaults

    set_openmp_defaults()  # before torch is imported (build_parser imports the methods)
    parser = build_parser()
    args = parser.parse_args(argv)
    show_progress_log()
    try:
        apply_threads()  # $CONTINUAL_LM_THREADS or the default; a run applies its own --threads when it starts
        return args.func(args)
    except ContinualLMError as err:
        print(f"continual-lm: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"continual-lm: error: no space left on device while writing {err.filename or 'a file'}; what was "
              f"written so far is consistent (atomic writes): free some space, then continue a run with "
              f"`continual-lm run --resume RUN_DIR`", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; continue with `continual-lm run --resume RUN_DIR`", file=sys.stderr)
        return 130
