"""Disk used by phase checkpoints over 15 tasks, before and after content-addressed checkpoints (issue 18, point 12).

    python bench/checkpoint_disk.py [--model smollm2-135m] [--tasks 15] [--methods inclora amlora seqft]

The model is SmolLM2-135M's architecture (its config, random fp32 weights: sizes do not depend on the values); each
method is set up as the loop does it, and for every phase the script runs the method's ``before_task`` (new LoRAs,
selector weights, freezing), changes every parameter that is trainable in that phase (what training does), and
writes the phase checkpoint with the real ``RunDir.save_checkpoint``. No model is trained: only what is stored
matters here.

* before: the first checkpoint format wrote every parameter that was ever trainable, in full, into each phase's
  folder (its safetensors files are serialized here to count their exact bytes, without writing them);
* after: the bytes each phase actually adds on disk (its new blob, method_state.json, manifest.json), and the
  checkpoint directory's size after the last phase with ``--keep-checkpoints all`` and ``last``.

seqft changes every parameter every phase, so nothing can be shared: its 'all' figure is the sum of what each phase
writes (measured; the script asserts that no seqft tensor was reused), and it is run with pruning only, so that
8 GB are not written to measure it. Writes bench/checkpoint_disk.md and bench/checkpoint_disk.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from safetensors.torch import save as safetensors_bytes  # noqa: E402

from continual_lm.config import RunConfig  # noqa: E402
from continual_lm.data.tasks import CLASSIFICATION, ACCURACY, Task  # noqa: E402
from continual_lm.methods.base import build_method  # noqa: E402
from continual_lm.train.checkpoint import RunDir  # noqa: E402


def build_model(spec: str):
    from transformers import AutoModelForCausalLM

    from continual_lm.models.backbone import load_model_config

    config = load_model_config(spec)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def first_format_bytes(trainable: dict, method_tensors: dict, meta: dict) -> int:
    """Bytes of a first-format phase folder: trainable.safetensors + method_state.safetensors + method_state.json
    (+ a manifest of about 400 bytes)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in trainable.items()}
    return (len(safetensors_bytes(contiguous)) + len(safetensors_bytes(method_tensors))
            + len(json.dumps(meta, indent=1)) + 400)


def simulate(spec: str, method_name: str, tasks: int, root: Path, modes: tuple[str, ...]) -> dict:
    """Per phase: first-format bytes, bytes added, and the checkpoint directory's size in each mode."""
    model = build_model(spec)
    config = RunConfig(method=method_name, model=spec)
    method = build_method(config)
    method.tasks = [Task(f"task{i}", CLASSIFICATION, ACCURACY, "", [], [], labels=["a", "b"]) for i in range(tasks)]
    method.setup(model, None)
    touched: set[str] = set()
    dirs = {mode: RunDir(root / f"{method_name}-{mode}") for mode in modes}
    phases, before_cache = [], None
    generator = torch.Generator().manual_seed(1)
    for row in range(tasks):
        method.before_task(model, row, method.tasks[row])
        trainable_now = {n for n, p in model.named_parameters() if p.requires_grad}
        touched |= trainable_now
        with torch.no_grad():  # what a phase of training does to the weights it trains
            for name, p in model.named_parameters():
                if name in trainable_now:
                    p.add_(torch.randn(p.shape, generator=generator) * 1e-3)
        state = {n: p for n, p in model.named_parameters() if n in touched}
        tensors, meta = method.extra_state()
        if method_name == "seqft" and before_cache is not None:
            before = before_cache  # the same shapes every phase
        else:
            before = first_format_bytes(state, tensors, meta)
            before_cache = before
        record = {"phase": row, "first_format_bytes": before,
                  "trainable_tensor_bytes": sum(p.numel() * p.element_size() for p in state.values())}
        for mode, run_dir in dirs.items():
            size = disk_bytes(run_dir.path) if run_dir.path.exists() else 0
            folder = run_dir.save_checkpoint(row, state, tensors, meta)
            record[f"added_bytes_{mode}"] = disk_bytes(run_dir.path) - size
            if method_name == "seqft":
                manifest = json.loads((folder / "manifest.json").read_text())
                assert len(manifest["blobs"]) == 1, "seqft reused a tensor: its 'all' figure would be wrong"
            if mode == "last":
                run_dir.prune_checkpoints(row)
            record[f"on_disk_{mode}"] = disk_bytes(run_dir.path)
            assert run_dir.load_checkpoint(row)[0].keys() == state.keys()
        phases.append(record)
        print(f"[checkpoint_disk] {method_name} phase {row}: first format {before:,} B, added "
              f"{record[f'added_bytes_{modes[0]}']:,} B", flush=True)
    return {"phases": phases}


def mib(value: int) -> str:
    return f"{value / 2**20:,.2f}"


def markdown(results: dict, spec: str, tasks: int, elapsed: float) -> str:
    lines = ["# Checkpoint disk use over 15 tasks (`bench/checkpoint_disk.py`)", "",
             f"Generated by the script: model {spec} (its architecture, fp32), {tasks} tasks, default LoRA settings "
             f"(r 8, q/v projections), {elapsed:.0f} s. Sizes in MiB (2^20 bytes). 'first format': every checkpoint "
             "held every parameter ever trained; 'now': a checkpoint writes only the tensors no earlier checkpoint "
             "stored (content-addressed blobs, train/checkpoint.py).", "",
             "| method | per-phase bytes, first format (phase 1 / 15) | per-phase bytes now (phase 1 / 15) | "
             "all checkpoints, first format | all checkpoints now | `--keep-checkpoints last`, first format | "
             "`last` now |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, result in results.items():
        phases = result["phases"]
        mode = "all" if "on_disk_all" in phases[-1] else "last"
        added = [p[f"added_bytes_{mode}"] for p in phases]
        before_all = sum(p["first_format_bytes"] for p in phases)
        now_all = phases[-1]["on_disk_all"] if mode == "all" else sum(added)
        lines.append(f"| {name} | {mib(phases[0]['first_format_bytes'])} / {mib(phases[-1]['first_format_bytes'])} | "
                     f"{mib(added[0])} / {mib(added[-1])} | {mib(before_all)} | {mib(now_all)}"
                     f"{'' if mode == 'all' else ' (sum of the writes)'} | {mib(phases[-1]['first_format_bytes'])} | "
                     f"{mib(phases[-1]['on_disk_last'])} |")
    lines += ["", "Per phase (bytes added on disk now, `--keep-checkpoints all`; seqft: with `last`):", "",
              "| phase | " + " | ".join(f"{n} first format | {n} now" for n in results) + " |",
              "| ---: | " + " | ".join("---: | ---:" for _ in results) + " |"]
    for row in range(tasks):
        cells = []
        for result in results.values():
            p = result["phases"][row]
            cells += [mib(p["first_format_bytes"]), mib(p.get("added_bytes_all", p.get("added_bytes_last")))]
        lines.append(f"| {row + 1} | " + " | ".join(cells) + " |")
    lines += ["", "What the figures say: a frozen LoRA (inclora) is written once, so the checkpoints grow linearly "
              "with the tasks (about 1.9 MiB per task here, of which the manifest listing every tensor is the "
              "growing part) instead of quadratically. amlora's selector weights of earlier tasks keep training "
              "(`--amlora-mode all`), so each phase rewrites them beside its new LoRA, in a blob of their own that "
              "the next phase no longer needs: `--keep-checkpoints last` frees it, and keeps only the first version "
              "of each task's selector weights beside that task's LoRA. seqft changes every weight in every phase: "
              "nothing can be shared, each phase writes the whole model, and `--keep-checkpoints last` is the answer "
              "for full fine-tuning (one checkpoint on disk, two while the next one is written).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=["inclora", "amlora", "seqft"])
    parser.add_argument("--output", default=str(HERE / "checkpoint_disk"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods:
            modes = ("last",) if name == "seqft" else ("all", "last")
            results[name] = simulate(args.model, name, args.tasks, Path(tmp), modes)
    elapsed = time.perf_counter() - start
    Path(args.output + ".json").write_text(json.dumps({"model": args.model, "tasks": args.tasks,
                                                       "seconds": round(elapsed, 1), "results": results}, indent=1))
    Path(args.output + ".md").write_text(markdown(results, args.model, args.tasks, elapsed))
    print(f"[checkpoint_disk] {elapsed:.0f} s -> {args.output}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
