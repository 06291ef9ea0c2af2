"""The loss over the answer positions only (``continual_lm.models.lm_forward``) against the model's own loss over
every position's logits: one LoRA training step of smollm2-135m on the base preset's real batches.

    python bench/lm_forward.py [--repeats 5] [--threads 2] [--data-dir ../shared/data]

For each benchmark of ``bench/reproduce.py --preset base`` (standard order 1, SuperNI order 1), the first training
batch of each of the first --tasks tasks, built by the run's own collator with the preset's settings. Both losses
run interleaved on the same batches with the same dropout masks (median of --repeats rounds over the batches, after
a warm-up round); the LoRA gradients of the two are compared. Peak RSS (VmHWM) is measured in a fresh process per
loss doing 2 rounds over the standard batches. Writes bench/lm_forward.md and .json.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from continual_lm.config import RunConfig  # noqa: E402
from continual_lm.data.collate import Collator  # noqa: E402
from continual_lm.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from continual_lm.models.backbone import default_lora_targets, load_backbone  # noqa: E402
from continual_lm.models.inject import inject_lora_banks  # noqa: E402
from continual_lm.models.lm_forward import answer_columns, batch_forward  # noqa: E402
from continual_lm.data.stream import load_stream_for  # noqa: E402
from reproduce import PRESETS  # noqa: E402
from speed import peak_rss_mib  # noqa: E402

LOSSES = ("all positions", "answer positions")


def lora_backbone(model: str):
    torch.manual_seed(0)
    backbone = load_backbone(model)
    backbone.model.requires_grad_(False)
    lora = RunConfig().lora
    for bank in inject_lora_banks(backbone.model, default_lora_targets(backbone.model), r=lora.r, alpha=lora.alpha,
                                  dropout=lora.dropout).values():
        bank.add_lora()
    backbone.model.train()
    return backbone


def preset_batches(backbone, benchmark: str, data_dir: str, tasks: int) -> list[dict]:
    preset = PRESETS["base"]
    settings = preset["benchmarks"][benchmark]
    config = RunConfig(benchmark=benchmark, model=preset["model"], seed=preset["seed"], data_dir=data_dir, **settings)
    stream = load_stream_for(config)
    collator = Collator(backbone.tokenizer, backbone.is_seq2seq, config.max_input_length, config.max_target_length)
    return [collator.train_batch([collator.encode_train(task, ex, i) for ex in task.train[:config.batch_size]])
            for i, task in enumerate(stream.tasks[:tasks])]


def step(model, optimizer, batch, loss: str, seed: int) -> tuple[float, dict]:
    """One optimizer step; returns its seconds and the LoRA gradients (dropout seeded by ``seed``)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    if loss == LOSSES[0]:
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    else:
        outputs = batch_forward(model, batch)
    outputs.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, grads


def measure(backbone, batches: list[dict], repeats: int) -> dict:
    model = backbone.model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # weights stay put
    seconds = {loss: [] for loss in LOSSES}
    max_diff, identical = 0.0, True
    for round_ in range(repeats + 1):
        totals = {loss: 0.0 for loss in LOSSES}
        for k, batch in enumerate(batches):
            grads = {}
            for loss in LOSSES:
                elapsed, grads[loss] = step(model, optimizer, batch, loss, seed=1000 * round_ + k)
                totals[loss] += elapsed
            for name, g in grads[LOSSES[0]].items():
                identical &= torch.equal(g, grads[LOSSES[1]][name])
                max_diff = max(max_diff, (g - grads[LOSSES[1]][name]).abs().max().item())
        if round_:  # round 0 warms up
            for loss in LOSSES:
                seconds[loss].append(totals[loss] / len(batches))
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    kept = [len(answer_columns(b["labels"])) for b in batches]
    return {"batches": shapes, "answer_columns": kept, "seconds_per_step": seconds,
            "median_s": {loss: statistics.median(v) for loss, v in seconds.items()},
            "gradients_identical": identical, "max_abs_gradient_difference": max_diff}


def memory_child(args) -> None:
    backbone = lora_backbone(args.model)
    batches = preset_batches(backbone, "standard", args.data_dir, args.tasks)
    optimizer = torch.optim.SGD([p for p in backbone.model.parameters() if p.requires_grad], lr=0.0)
    for round_ in range(2):
        for k, batch in enumerate(batches):
            step(backbone.model, optimizer, batch, args.memory_of, seed=k)
    print(round(peak_rss_mib(), 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=PRESETS["base"]["model"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4, help="first training batch of each of the first N tasks")
    parser.add_argument("--data-dir", default=os.environ.get("CONTINUAL_LM_DATA", str(HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--memory-of", choices=LOSSES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        memory_child(args)
        return 0
    backbone = lora_backbone(args.model)
    results = {b: measure(backbone, preset_batches(backbone, b, args.data_dir, args.tasks), args.repeats)
               for b in PRESETS["base"]["benchmarks"]}
    memory = {}
    for loss in LOSSES:
        out = subprocess.run([sys.executable, __file__, "--memory-of", loss, "--model", args.model, "--tasks",
                              str(args.tasks), "--data-dir", args.data_dir, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        memory[loss] = float(out.stdout.strip().splitlines()[-1])
    vocab = backbone.model.config.vocab_size
    summary = {"model": args.model, "vocab_size": vocab, "threads": args.threads, "repeats": args.repeats,
               "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
               "benchmarks": results, "peak_rss_mib_standard": memory}
    atomic_write_json(HERE / "lm_forward.json", summary)

    lines = ["# The loss over the answer positions only vs every position's logits", "",
             f"`python bench/lm_forward.py --repeats {args.repeats} --threads {args.threads}` · {args.model} "
             f"(vocabulary {vocab:,}) · LoRA r {RunConfig().lora.r} on the default targets · torch {torch.__version__}"
             f" · {args.threads} threads", "",
             "One training step on the first batch of each of the first "
             f"{args.tasks} tasks of the base preset (its collator and settings); median over {args.repeats} rounds "
             "of the mean step time. Both losses see the same batches and dropout masks.", "",
             "| benchmark | batch shapes | logit positions kept | all positions (s / step) | answer positions "
             "(s / step) | speed-up | LoRA gradients |", "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for benchmark, r in results.items():
        med = r["median_s"]
        grads = "identical" if r["gradients_identical"] else f"max diff {r['max_abs_gradient_difference']:.1e}"
        kept = ", ".join(f"{k}/{shape[1]}" for k, shape in zip(r["answer_columns"], r["batches"]))
        shapes = ", ".join(f"{b}x{t}" for b, t in r["batches"])
        lines.append(f"| {benchmark} | {shapes} | {kept} | {med[LOSSES[0]]:.2f} | {med[LOSSES[1]]:.2f} | "
                     f"{med[LOSSES[0]] / med[LOSSES[1]]:.2f}x | {grads} |")
    lines += ["", f"Peak RSS of a process doing 2 rounds over the standard batches: {memory[LOSSES[0]]:.0f} MiB with "
              f"every position's logits, {memory[LOSSES[1]]:.0f} MiB with the answer positions' "
              f"({memory[LOSSES[0]] - memory[LOSSES[1]]:.0f} MiB less)."]
    atomic_write_text(HERE / "lm_forward.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
