"""Is bf16 autocast a way to make the base preset (then named small) fit "a few hours" on this CPU? One LoRA training step of
smollm2-135m (the base preset's shape: batch 8 x 128 tokens, LoRA r 8 on the default targets) in float32 and under
``torch.autocast("cpu", bfloat16)``, interleaved, median of --repeats steps each after a warm-up.

    python bench/cpu_bf16_step.py [--repeats 5] [--threads 2] [--output-stem cpu_bf16_step]

Writes bench/<output-stem>.md and .json (committed: cpu_bf16_step on a CPU with AVX512-BF16,
cpu_bf16_step_no_avx512bf16 on one without).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from continual_lm.io_utils import atomic_write_json, atomic_write_text
from continual_lm.models.backbone import default_lora_targets, load_backbone
from continual_lm.models.inject import inject_lora_banks

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-stem", default="cpu_bf16_step", help="file name (without suffix) under bench/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_backbone("smollm2-135m").model
    model.requires_grad_(False)
    for bank in inject_lora_banks(model, default_lora_targets(model), r=8, alpha=32.0, dropout=0.1).values():
        bank.add_lora()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = torch.randint(0, model.config.vocab_size, (8, 128))

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    times = {"float32": [], "bf16 autocast": []}
    step(False), step(True)  # warm-up
    for _ in range(args.repeats):
        times["float32"].append(step(False))
        times["bf16 autocast"].append(step(True))
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["float32"] / medians["bf16 autocast"]
    cpu = platform.processor() or platform.machine()
    result = {"threads": args.threads, "repeats": args.repeats, "seconds": times, "median_s": medians,
              "speedup": ratio, "torch": torch.__version__, "cpu": cpu,
              "bf16_instructions": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
              if Path("/proc/cpuinfo").exists() else None}
    atomic_write_json(HERE / f"{args.output_stem}.json", result)
    lines = ["# One LoRA training step of smollm2-135m on CPU: float32 vs bf16 autocast", "",
             f"`python bench/cpu_bf16_step.py --repeats {args.repeats} --threads {args.threads} --output-stem "
             f"{args.output_stem}` · torch "
             f"{torch.__version__} · CPU with AVX512-BF16: {result['bf16_instructions']} · batch 8 x 128 tokens, "
             f"LoRA r 8 on the default targets", "",
             "| precision | median s / step |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in medians.items()]
    verdict = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    lines += ["", f"bf16 autocast is {verdict} per step on this CPU. The base preset's 38 runs take 8-9.5 h of a "
              f"2-core CPU in float32 (README, Cost), so bf16 alone would not bring them to a few hours (and would "
              f"change every committed number); the small preset stays in float32."]
    atomic_write_text(HERE / f"{args.output_stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
