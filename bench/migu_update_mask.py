"""MIGU: the fraction of rows of each masked matrix that change per optimizer step, gradient-only vs update masking.

    python bench/migu_update_mask.py        # smollm2-135m, CPU, 1 thread; writes bench/migu_update_mask.{md,json}
    python bench/migu_update_mask.py --steps 4 --methods seqlora+migu       # quicker

Paper (§3.1): W <- W - lr (M * grad W), so a masked row does not move in its step and the fraction of rows that
change per step is the unmasked fraction 1 - floor(T d)/d. ``--migu-mask gradient`` (the behaviour before issue 17)
only zeroes the gradient rows, and AdamW's moments keep moving the masked rows; ``--migu-mask update`` (default)
keeps the masked rows and their optimizer state out of the step.

Each (method, mask) trains with the project's own loop (``ContinualRunner.train_phase``: the loop's AdamW, clipping,
scheduler and hooks) on the first task(s) of the standard benchmark, order 1. A spy on the MIGU plugin copies every
matrix MIGU ranks after ``after_backward`` (with the rows MIGU masked in that step) and compares it after
``after_optimizer_step``: rows changed / rows, per matrix and step. ``inclora+migu`` trains a first LoRA, then
measures the second (the first is frozen). The first step of a LoRA is reported apart: its B is zero, every |x_B|
ties and B is not masked (the B = 0 rule), while A, whose gradient is zero with B = 0, does not move either way.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from continual_lm.config import RunConfig
from continual_lm.methods.migu import MIGU, units_to_mask
from continual_lm.train.assemble import build_runner

HERE = Path(__file__).resolve().parent


class RowSpy:
    """Per optimizer step and matrix MIGU ranks: (kind, rows, masked rows, rows changed, masked rows changed)."""

    def __init__(self, migu: MIGU):
        self.migu, self.steps, self.phase = migu, [], 0
        self.names: dict[int, str] = {}
        self.pending = None
        # after_backward; after_optimizer_step; from the end of after_backward to the end of after_optimizer_step
        # (clipping, the optimizer step with update masking's state copy, the write-back)
        self.timing = {"after_backward_s": [], "after_optimizer_step_s": [], "step_and_write_back_s": []}
        self.backward_done = 0.0
        self.mask: dict[int, torch.Tensor] = {}
        after_backward, after_step, masked_rows = migu.after_backward, migu.after_optimizer_step, migu.masked_rows

        def spy_masked_rows():
            rows = masked_rows()
            self.mask = {id(p): r for p, r in rows}
            return rows

        def spy_after_backward(model):
            start = time.perf_counter()
            after_backward(model)
            self.timing["after_backward_s"].append(time.perf_counter() - start)
            self.names = {id(p): n for n, p in model.named_parameters()}  # a new task adds LoRAs
            self.pending = []
            for p in self.ranked(model):
                masked = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
                masked[self.mask.get(id(p), masked.new_zeros(0, dtype=torch.long))] = True
                self.pending.append((p, p.detach().clone(), masked))
            self.backward_done = time.perf_counter()  # after the spy's own copies

        def spy_after_optimizer_step(model, optimizer):
            start = time.perf_counter()
            after_step(model, optimizer)
            done = time.perf_counter()
            self.timing["after_optimizer_step_s"].append(done - start)
            self.timing["step_and_write_back_s"].append(done - self.backward_done)
            record = []
            for p, before, masked in self.pending:
                changed = (p.detach() != before).any(dim=1)
                record.append({"name": self.names[id(p)], "kind": kind_of(self.names[id(p)]), "rows": changed.numel(),
                               "masked": int(masked.sum()), "changed": int(changed.sum()),
                               "masked_changed": int((changed & masked).sum())})
            self.steps.append({"phase": self.phase, "step_in_phase": sum(s["phase"] == self.phase for s in self.steps),
                               "matrices": record})
            self.pending = None

        migu.masked_rows, migu.after_backward = spy_masked_rows, spy_after_backward
        migu.after_optimizer_step = spy_after_optimizer_step

    def ranked(self, model):
        """The trained matrices MIGU ranks rows of: LoRA A/B being trained, or the target linears' weights."""
        params = []
        for module in self.migu.targets.values():
            if hasattr(module, "lora_A"):
                params += [p for p in list(module.lora_A) + list(module.lora_B) if p.grad is not None]
            elif module.weight.grad is not None:
                params.append(module.weight)
        return params


def kind_of(name: str) -> str:
    return "LoRA A" if ".lora_A." in name else "LoRA B" if ".lora_B." in name else "W (full FT)"


def measure(spec: str, mask: str, args) -> dict:
    config = RunConfig(benchmark="standard", order="1", method=spec, model=args.model, data_dir=args.data_dir,
                       seed=42, max_train_per_task=args.batch * args.steps, max_test_per_task=1,
                       max_input_length=args.max_input_length, max_target_length=8, batch_size=args.batch,
                       method_options={"migu": {"mask": mask}}, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        runner = build_runner(config, Path(tmp), write_config=False)
        migu = runner.method.parts[-1]
        spy = RowSpy(migu)
        initial = runner._initial_state()
        phases = runner.method.schedule(len(runner.tasks), False)[: 2 if spec.startswith("inclora") else 1]
        start = time.perf_counter()
        for phase in phases:
            spy.phase = phase.row
            runner._start_phase(phase, initial)
            runner.train_phase(phase)
        wall = time.perf_counter() - start
    measured_phase = phases[-1].row
    return {"method": spec, "mask": mask, "threshold": migu.threshold, "lr": config.lr, "wall_s": round(wall, 1),
            "measured_phase": measured_phase, "steps": spy.steps,
            "timing_median_s": {k: round(statistics.median(v), 5) for k, v in spy.timing.items() if v}}


def summarise(result: dict) -> list[dict]:
    """Per matrix kind: median (over steps after the first of the measured phase and over matrices) of the fraction
    of rows changed, the expected unmasked fraction, and how many masked rows moved; the first step apart."""
    rows = []
    steps = [s for s in result["steps"] if s["phase"] == result["measured_phase"]]
    kinds = sorted({m["kind"] for s in steps for m in s["matrices"]})
    for kind in kinds:
        def fractions(selected, key="changed"):
            return [m[key] / m["rows"] for s in selected for m in s["matrices"] if m["kind"] == kind]

        later, first = steps[1:], steps[:1]
        masked_total = sum(m["masked"] for s in later for m in s["matrices"] if m["kind"] == kind)
        moved = sum(m["masked_changed"] for s in later for m in s["matrices"] if m["kind"] == kind)
        unmasked = statistics.median([1 - units_to_mask(result["threshold"], m["rows"]) / m["rows"]
                                      for s in later for m in s["matrices"] if m["kind"] == kind])
        rows.append({"method": result["method"], "mask": result["mask"], "kind": kind,
                     "matrices": len([m for m in steps[0]["matrices"] if m["kind"] == kind]),
                     "steps": len(later), "unmasked_fraction": round(unmasked, 4),
                     "changed_median": round(statistics.median(fractions(later)), 4),
                     "changed_mean": round(statistics.mean(fractions(later)), 4),
                     "changed_min": round(min(fractions(later)), 4), "changed_max": round(max(fractions(later)), 4),
                     "masked_rows_moved": f"{moved}/{masked_total}",
                     "first_step_changed_median": round(statistics.median(fractions(first)), 4),
                     "first_step_masked_median": round(statistics.median(fractions(first, "masked")), 4)})
    return rows


def compact(result: dict) -> dict:
    """The run for the JSON: per step and matrix kind, the fraction of rows changed of each matrix (model order)."""
    steps = []
    for step in result["steps"]:
        kinds = {}
        for m in step["matrices"]:
            kinds.setdefault(m["kind"], []).append(round(m["changed"] / m["rows"], 4))
        steps.append({"phase": step["phase"], "step_in_phase": step["step_in_phase"], "changed_fraction": kinds})
    return {**result, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", nargs="+", default=["seqlora+migu", "inclora+migu", "seqft+migu"])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per measured phase")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-input-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("CONTINUAL_LM_DATA", str(HERE.parent.parent / "shared" /
                                                                                       "data")))
    parser.add_argument("--out", default=str(HERE / "migu_update_mask"), help="output path stem")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, load_at_start = time.time(), os.getloadavg()
    results, table = [], []
    for spec in args.methods:
        for mask in ("gradient", "update"):
            result = measure(spec, mask, args)
            results.append(compact(result))
            for row in summarise(result):
                table.append(row)
                print(f"{spec:14s} {mask:8s} {row['kind']:12s} changed {row['changed_median']:.3f} "
                      f"(unmasked {row['unmasked_fraction']:.3f}), masked rows moved {row['masked_rows_moved']}",
                      flush=True)
    record = {"model": args.model, "device": "cpu", "threads": torch.get_num_threads(), "batch": args.batch,
              "steps": args.steps, "max_input_length": args.max_input_length, "benchmark": "standard order 1",
              "torch": torch.__version__, "python": platform.python_version(),
              "load_average_at_start": [round(x, 2) for x in load_at_start],
              "wall_s": round(time.time() - started, 1), "summary": table, "runs": results}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    lines = [
        "# MIGU: rows changed per optimizer step, gradient-only vs update masking",
        "",
        f"Generated by `python bench/{Path(__file__).name}` ({args.model}, CPU, {record['threads']} thread, "
        f"standard order 1, batch {args.batch}, inputs up to {args.max_input_length} tokens, {args.steps} optimizer "
        f"steps per measured phase, the loop's AdamW with the method's default lr; {record['wall_s']} s, load "
        f"average at start {record['load_average_at_start']}).",
        "",
        "Per matrix MIGU masks and per optimizer step: rows changed / rows (a row changed if any entry differs after "
        "the step). `changed` = median (min-max) over the steps after the phase's first and over the matrices; "
        "`unmasked` = 1 - floor(T d)/d, what the paper's rule W <- W - lr (M * grad W) gives; `masked rows moved` "
        "= masked rows that changed in their step / masked rows, summed. inclora+migu: the second task's LoRA "
        "(the first trained, then frozen). `first step`: the phase's first step, median fraction changed and "
        "masked (a new LoRA's B = 0: nothing ranks, nothing is masked; A has a zero gradient then).",
        "",
        "| method | --migu-mask | matrices | steps | unmasked | changed (median, min-max) | masked rows moved | "
        "first step: changed / masked |",
        "|---|---|---|---:|---:|---|---|---|",
    ]
    for row in table:
        lines.append(f"| {row['method']} | {row['mask']} | {row['kind']} ({row['matrices']}) | {row['steps']} | "
                     f"{row['unmasked_fraction']:.3f} | {row['changed_median']:.3f} ({row['changed_min']:.3f}-"
                     f"{row['changed_max']:.3f}) | {row['masked_rows_moved']} | "
                     f"{row['first_step_changed_median']:.3f} / {row['first_step_masked_median']:.3f} |")
    lines += ["", "Median time per optimizer step (s; the spy's own copies excluded): `after_backward` (statistics "
              "all-reduce, ranking, gradient zeroing and, with update, the copy of the masked parameter rows), "
              "`after_optimizer_step` (the write-back) and `step + write-back` (clipping, `optimizer.step()` with "
              "update's copy of the optimizer-state rows, the write-back).", "",
              "| method | --migu-mask | after_backward | after_optimizer_step | step + write-back |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['mask']} | {r['timing_median_s']['after_backward_s']:.4f} | "
              f"{r['timing_median_s']['after_optimizer_step_s']:.4f} | "
              f"{r['timing_median_s']['step_and_write_back_s']:.4f} |" for r in results]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
