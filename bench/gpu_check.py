"""Tokens per second of seqlora against a plain peft + transformers LoRA loop (the peer), per attention kernel.

    python bench/gpu_check.py [--model smollm2-135m] [--device cuda] [--dtype bf16] [--reps 20] [--out DIR]

Part of bench/gpu_check.sh (docs/scaling.md, "GPU check"). Both variants are bench/speed.py's (``Variant``: the
method set up through its own class as the loop does; the peer a peft ``get_peft_model`` LoRA of the same rank and
targets, its loss computed the same way), on the same batches of the demo stream, moved to ``--device``, under
autocast in ``--dtype`` (what accelerate's ``--mixed-precision`` does). For every attention kernel transformers
offers for the model (eager, sdpa, flash_attention_2 where its package is installed): a training step (forward,
backward, AdamW) and a generation of 8 new tokens, timed after warm-up with the device synchronised, interleaved
repetitions, medians. Tokens = the batch's real (non-padding) tokens. Writes DIR/gpu_check.json and DIR/gpu_check.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from speed import PEER, Variant, batches  # noqa: E402

from continual_lm.data.demo import demo_tasks  # noqa: E402
from continual_lm.models.backbone import load_backbone  # noqa: E402

KERNELS = ("eager", "sdpa", "flash_attention_2")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure(args) -> dict:
    device = torch.device(args.device)
    autocast = (torch.autocast(device.type, dtype=DTYPES[args.dtype]) if DTYPES[args.dtype] is not None
                else contextlib.nullcontext())
    torch.manual_seed(0)
    backbone = load_backbone(args.model)
    tasks = demo_tasks(n_train=max(16, args.batch), n_test=max(16, args.batch))[:2]
    train, prompts = batches(backbone.tokenizer, backbone.is_seq2seq, tasks, args.batch, args.seq_len)
    train = {k: v.to(device) for k, v in train.items()}
    prompts = {k: v.to(device) for k, v in prompts.items()}
    train_tokens = int(train["attention_mask"].sum())
    rows, skipped = [], {}
    for kernel in args.kernels:
        variants = []
        try:
            for spec in (PEER, "seqlora"):
                v = Variant(spec, backbone, tasks, args.batch, args.seq_len)
                v.model.set_attn_implementation(kernel)
                v.model.to(device)  # in place: the optimizer's parameters are the moved ones
                variants.append(v)
        except (ImportError, ValueError, RuntimeError) as err:  # kernel not offered here (package, model, device)
            skipped[kernel] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        step = {v.label: [] for v in variants}
        generate = {v.label: [] for v in variants}
        with autocast:
            for v in variants:  # warm-up: kernels chosen, caches allocated
                for _ in range(2):
                    v.train_step(train)
                    v.eval_throughput(prompts)
            for rep in range(args.reps):
                for v in variants[rep % 2:] + variants[:rep % 2]:
                    step[v.label].append(_timed(lambda: v.train_step(train), device))
                    generate[v.label].append(_timed(lambda: v.method.generate(v.model.eval(), prompts, 8), device))
                    v.model.train()
        for v in variants:
            s, g = statistics.median(step[v.label]), statistics.median(generate[v.label])
            rows.append({"kernel": kernel, "variant": v.label, "train_step_s": round(s, 5),
                         "train_tokens_per_s": round(train_tokens / s, 1), "generate_s": round(g, 5),
                         "generated_tokens_per_s": round(prompts["input_ids"].shape[0] * 8 / g, 1)})
        del variants
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ratios = {}
    for kernel in {r["kernel"] for r in rows}:
        of = {r["variant"]: r for r in rows if r["kernel"] == kernel}
        ratios[kernel] = round(of["seqlora"]["train_tokens_per_s"] / of[PEER]["train_tokens_per_s"], 3)
    return {"model": args.model, "device": str(device), "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda" else platform.processor() or platform.machine(), "dtype": args.dtype,
            "batch": args.batch, "seq_len": args.seq_len, "train_tokens_per_batch": train_tokens, "reps": args.reps,
            "torch": torch.__version__, "python": platform.python_version(), "rows": rows,
            "seqlora_over_peer_train_tokens_per_s": ratios, "kernels_skipped": skipped}


def write(info: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = [f"# Tokens per second: seqlora vs a plain peft LoRA loop (`bench/gpu_check.py`)", "",
             f"{info['model']} on {info['device_name']} ({info['device']}), autocast {info['dtype']}, batch "
             f"{info['batch']} x {info['seq_len']} ({info['train_tokens_per_batch']} real tokens), medians of "
             f"{info['reps']} interleaved repetitions, torch {info['torch']}. Target: seqlora >= 0.95x the peer's "
             f"training tokens/s.", "",
             "| attention | variant | train step (s) | train tokens/s | generate 8 tokens (s) | generated tokens/s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in info["rows"]:
        lines.append(f"| {r['kernel']} | {r['variant']} | {r['train_step_s']:.4f} | {r['train_tokens_per_s']:.0f} | "
                     f"{r['generate_s']:.4f} | {r['generated_tokens_per_s']:.0f} |")
    lines += ["", "seqlora / peer, training tokens/s: " + ", ".join(
        f"{k} {v}x" for k, v in sorted(info["seqlora_over_peer_train_tokens_per_s"].items()))]
    lines += [f"- {k} not measured: {why}" for k, why in info["kernels_skipped"].items()]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def versions() -> None:
    """What the machine runs: Python, torch and CUDA, the libraries, and the optional engines and kernels."""
    import accelerate
    import peft
    import transformers

    print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
          "available" if torch.cuda.is_available() else "not available")
    print("transformers", transformers.__version__, "| peft", peft.__version__, "| accelerate", accelerate.__version__)
    for name in ("deepspeed", "flash_attn"):
        try:
            print(name, __import__(name).__version__)
        except Exception as err:  # noqa: BLE001 (a broken install counts as missing here)
            print(name, "unavailable:", type(err).__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=112)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--versions", action="store_true", help="print the versions of what is installed and exit")
    args = parser.parse_args(argv)
    if args.versions:
        versions()
        return 0
    write(measure(args), Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
