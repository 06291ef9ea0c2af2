"""MIGU overhead: one training step with and without MIGU, for full fine-tuning and LoRA, in one process.

    python bench/migu_speed.py                  # CPU, writes bench/migu_speed.{md,json}
    python bench/migu_speed.py --device cuda --batch 16 --seq 256 --out bench/migu_speed_gpu

A step is what the loop does per batch: before_forward, forward, extra_loss, backward, after_backward, AdamW step,
after_optimizer_step (MIGU's default --migu-mask update writes the masked rows back there), zero_grad. The methods
are the project's own (build_method(RunConfig(method="seqlora+migu")), setup, before_task). For each (model,
mode) two copies of the same weights are trained on the same batch, plain and +migu, steps interleaved in
sandwiches (plain migu plain / migu plain migu); the overhead is the median over sandwiches of mean(migu) /
mean(plain) - 1 (also reported: the ratio of the fastest steps, robust to load from other users).

Models: ``smollm2-135m`` (the real cached weights; with --random-smollm2, or when it cannot be loaded, a random
model of the same architecture, which times the same) and a larger random Llama (hidden 1024, 4 layers).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from continual_lm.config import RunConfig
from continual_lm.methods.base import build_method

SMOLLM2_ARCH = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
LARGE_ARCH = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                  num_key_value_heads=4, vocab_size=8192, tie_word_embeddings=False)


def random_llama(arch: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(max_position_embeddings=2048, **arch))


def load_models(random_smollm2: bool):
    models = []
    if not random_smollm2:
        try:
            from continual_lm.models.backbone import load_backbone

            models.append(("smollm2-135m", load_backbone("smollm2-135m").model))
        except Exception as exc:  # noqa: BLE001 - benchmark: fall back to the same architecture
            print(f"smollm2-135m not loadable ({exc}); using a random model of its architecture")
    if not models:
        models.append(("smollm2-135m-arch (random weights)", random_llama(SMOLLM2_ARCH)))
    models.append(("random-llama-h1024-l4", random_llama(LARGE_ARCH)))
    return models


def make_batch(vocab: int, batch: int, seq: int, device):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, batch):  # some right padding, as real batches have
        mask[row, seq - 7 * row:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : seq // 2] = -100  # the prompt
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


class Trainer:
    """One model copy with its method and optimiser; ``step()`` is the loop's training step."""

    def __init__(self, base_model, spec: str, device):
        self.model = copy.deepcopy(base_model).to(device)
        config = RunConfig(method=spec, model="bench")
        self.method = build_method(config)
        self.method.setup(self.model, None)
        self.method.before_task(self.model, 0, None)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5 if "seqft" in spec else 1e-4, weight_decay=0.0)
        self.device = device
        self.after_backward_s: list[float] = []

    def step(self, batch) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        method, model = self.method, self.model
        method.before_forward(model, batch)
        outputs = method.forward(model, batch)
        extra = method.extra_loss(model, batch, outputs)
        (outputs.loss + extra if extra is not None else outputs.loss).backward()
        sync()
        masking_start = time.perf_counter()
        method.after_backward(model)
        sync()
        self.after_backward_s.append(time.perf_counter() - masking_start)
        self.optimizer.step()
        method.after_optimizer_step(model, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start


def measure(base_model, base_spec: str, batch, device, reps: int, warmup: int) -> dict:
    plain, migu = Trainer(base_model, base_spec, device), Trainer(base_model, f"{base_spec}+migu", device)
    for _ in range(warmup):
        plain.step(batch), migu.step(batch)
    times = {"plain": [], "migu": []}
    ratios = []
    for rep in range(reps):  # sandwiches, alternating: plain migu plain, then migu plain migu (cancels drift)
        order = (plain, migu, plain) if rep % 2 == 0 else (migu, plain, migu)
        measured = {"plain": [], "migu": []}
        for trainer in order:
            measured["plain" if trainer is plain else "migu"].append(trainer.step(batch))
        for key in times:
            times[key] += measured[key]
        ratios.append(statistics.mean(measured["migu"]) / statistics.mean(measured["plain"]))
    mask_s = statistics.median(migu.after_backward_s[warmup:])
    del plain, migu
    return {"plain_s": statistics.median(times["plain"]), "migu_s": statistics.median(times["migu"]),
            "after_backward_s": mask_s,
            "overhead": statistics.median(ratios) - 1,
            "overhead_of_minimums": min(times["migu"]) / min(times["plain"]) - 1,
            "ratios": [round(r, 4) for r in ratios],
            "times_s": {k: [round(v, 4) for v in vs] for k, vs in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=48)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared CPU)")
    parser.add_argument("--random-smollm2", action="store_true", help="random weights with SmolLM2-135M's shape")
    parser.add_argument("--out", default=str(Path(__file__).with_name("migu_speed")), help="output path stem")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_at_start = os.getloadavg()
    started = time.time()
    rows = []
    for model_name, base_model in load_models(args.random_smollm2):
        batch = make_batch(base_model.config.vocab_size, args.batch, args.seq, device)
        for mode, spec in (("full FT", "seqft"), ("LoRA (q,v; r=8)", "seqlora")):
            result = measure(base_model, spec, batch, device, args.reps, args.warmup)
            rows.append({"model": model_name, "mode": mode, "method": f"{spec} vs {spec}+migu", **result})
            print(f"{model_name:36s} {mode:16s} plain {result['plain_s']:.3f}s  +migu {result['migu_s']:.3f}s  "
                  f"overhead {100 * result['overhead']:+.1f}%  (masking {result['after_backward_s']:.3f}s)", flush=True)
        del base_model
    record = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "batch": args.batch, "seq": args.seq, "reps": args.reps, "warmup": args.warmup,
        "threads": torch.get_num_threads(), "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.time() - started, 1),
        "torch": torch.__version__, "python": platform.python_version(), "targets": {"LoRA": 0.10, "full FT": 0.15},
        "results": rows,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    lines = [
        "# MIGU speed: training step with and without MIGU",
        "",
        f"Generated by `python bench/{Path(__file__).name}` ({record['device']}, torch {record['torch']}, "
        f"{record['threads']} threads, batch {args.batch} x {args.seq} tokens, {args.reps} interleaved sandwiches "
        f"after {args.warmup} warm-up steps; load average at start {record['load_average_at_start']}, at end "
        f"{record['load_average_at_end']}; {record['wall_s']} s).",
        "Overhead = median over interleaved sandwiches (plain, migu, plain / migu, plain, migu) of mean(+migu) / "
        "mean(plain) - 1; `min` = ratio of the fastest steps - 1. Targets: LoRA <= 10%, full FT <= 15%.",
        "",
        "| model | mode | plain step (s) | +migu step (s) | of which after_backward (s) | overhead | min | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        target = 0.15 if row["mode"] == "full FT" else 0.10
        verdict = "met" if row["overhead"] <= target else "MISSED"
        lines.append(f"| {row['model']} | {row['mode']} | {row['plain_s']:.3f} | {row['migu_s']:.3f} | "
                     f"{row['after_backward_s']:.3f} | {100 * row['overhead']:+.1f}% | "
                     f"{100 * row['overhead_of_minimums']:+.1f}% | <= {100 * target:.0f}%: {verdict} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
