"""Speed of AM-LoRA against SeqLoRA: a training step and an evaluation forward with 1, 4 and 15 LoRAs.

    python bench/amlora_speed.py [--reps 5] [--batch 4] [--seq-len 64] [--models smollm2-135m random-1024]

Every variant is set up through the project's own method classes (Method.setup + before_task per task, as the loop
does) on its own copy of the same backbone, and timed on the same batch. Repetitions are interleaved (one step of
every variant per round, in a rotating order) so that load from other processes hits all variants alike; the
figures are medians, and the ratios are amlora / seqlora within this one process. Writes bench/amlora_speed.md and
bench/amlora_speed.json next to this file.

Training step = forward + loss (+ the method's extra loss) + backward + gradient clipping + AdamW step, as in
train/loop.py. Evaluation forward = one no-grad forward of the batch in eval mode. 1-token forward = the first token
of every sequence only (what a decoding step of generation costs, roughly). Each is timed as wall-clock and as this
process's CPU time (one torch thread by default).
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
from continual_lm.models.backbone import Backbone, build_byte_tokenizer, load_backbone

HERE = Path(__file__).resolve().parent
LORA_COUNTS = (1, 4, 15)
TARGET = {"train": 1.3, "eval": 1.2}  # ratios to seqlora with 15 LoRAs (the target)


def random_llama(hidden: int = 1024, layers: int = 4) -> Backbone:
    """A random Llama with hidden size >= 1024 (full multi-head attention), the byte tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         pad_token_id=0, bos_token_id=2, eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    return Backbone(model=LlamaForCausalLM(config), tokenizer=tokenizer, is_seq2seq=False, name=f"random-{hidden}",
                    source="random LlamaConfig")


def load(spec: str) -> Backbone:
    if spec.startswith("random-"):
        return random_llama(int(spec.split("-")[1]))
    return load_backbone(spec)


class Variant:
    """One method with a given number of LoRAs on its own copy of the backbone, set up as the loop does."""

    def __init__(self, backbone: Backbone, method: str, num_loras: int):
        self.label = method if method == "seqlora" else f"amlora x{num_loras}"
        self.model = copy.deepcopy(backbone.model)
        config = RunConfig(method=method, model=backbone.name, lr=1e-3,
                           method_options={"amlora": {"attention_samples": 0}})
        self.method = build_method(config)
        self.method.setup(self.model, backbone)
        for task_index in range(num_loras if method == "amlora" else 0):
            self.method.before_task(self.model, task_index, None)
        with torch.no_grad():  # trained-looking LoRAs: B != 0, so the selector scores are not all zero
            for bank in self.method.banks.values():
                for B in bank.lora_B:
                    B.normal_(0, 0.02)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-3, weight_decay=0.0)

    def train_step(self, batch) -> None:
        self.model.train()
        outputs = self.model(**batch)
        extra = self.method.extra_loss(self.model, batch, outputs)
        loss = outputs.loss + extra if extra is not None else outputs.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_forward(self, batch) -> None:
        self.model.eval()
        self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    @torch.no_grad()
    def one_token_forward(self, batch) -> None:
        """One token per sequence: memory-bound like a decoding step of generation (informative, no target)."""
        self.model.eval()
        self.model(input_ids=batch["input_ids"][:, :1])


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): with one torch thread, CPU time leaves out the time the shared
    machine's other processes held the cores, so its ratios are the steadier ones under load."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_model(spec: str, reps: int, batch_size: int, seq_len: int) -> dict:
    backbone = load(spec)
    backbone.model.float()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(backbone.tokenizer), (batch_size, seq_len), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    variants = [Variant(backbone, "seqlora", 1)] + [Variant(backbone, "amlora", n) for n in LORA_COUNTS]
    keys = ("train", "eval", "one_token", "train_cpu", "eval_cpu", "one_token_cpu")
    times: dict[str, dict[str, list[float]]] = {v.label: {k: [] for k in keys} for v in variants}
    for round_index in range(reps + 1):  # round 0 is a warm-up, not recorded
        order = variants[round_index % len(variants):] + variants[:round_index % len(variants)]
        for variant in order:
            train_s, train_cpu = timed(variant.train_step, batch)
            eval_s, eval_cpu = timed(variant.eval_forward, batch)
            token_s, token_cpu = timed(variant.one_token_forward, batch)
            if round_index:
                for key, value in zip(keys, (train_s, eval_s, token_s, train_cpu, eval_cpu, token_cpu)):
                    times[variant.label][key].append(value)
        print(f"  {spec}: round {round_index}/{reps} done", flush=True)
    medians = {label: {k: statistics.median(v) for k, v in t.items()} for label, t in times.items()}
    ratios = {label: {k: medians[label][k] / medians["seqlora"][k] for k in keys}
              for label in medians if label != "seqlora"}
    config = backbone.model.config
    return {"model": spec, "hidden_size": config.hidden_size, "layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size, "median_s": medians, "ratio_to_seqlora": ratios, "times_s": times}


def markdown(result: dict) -> str:
    lines = ["# AM-LoRA speed vs SeqLoRA", "",
             "Generated by `python bench/amlora_speed.py`; do not edit by hand. Ratios are amlora / seqlora medians "
             "measured interleaved in one process on the same batch (see the script's docstring).", "",
             f"- batch {result['batch_size']} x {result['seq_len']} tokens, {result['reps']} recorded repetitions "
             f"(+1 warm-up), torch threads {result['threads']}, float32, CPU",
             f"- load average at start (1/5/15 min): {', '.join(f'{x:.2f}' for x in result['load_average_start'])}; "
             f"at end: {', '.join(f'{x:.2f}' for x in result['load_average_end'])}",
             f"- machine: {result['machine']}; torch {result['torch']}",
             f"- target with 15 LoRAs: training step <= {TARGET['train']}x, evaluation forward <= {TARGET['eval']}x",
             "- wall = elapsed time; CPU = this process's CPU time (`time.process_time`, one torch thread), which leaves "
             "out the time other processes on the shared machine held the cores",
             "- 1-token = a no-grad forward of one token per sequence (memory-bound like a generation decoding step; "
             "informative, no target)", ""]
    for model in result["models"]:
        lines += [f"## {model['model']} (hidden {model['hidden_size']}, {model['layers']} layers, "
                  f"vocab {model['vocab_size']})", "",
                  "| variant | train step wall (s) | eval forward wall (s) | train ratio wall | eval ratio wall "
                  "| train ratio CPU | eval ratio CPU | 1-token ratio CPU |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, median in model["median_s"].items():
            ratio = model["ratio_to_seqlora"].get(label, dict.fromkeys(median, 1.0))
            lines.append(f"| {label} | {median['train']:.3f} | {median['eval']:.3f} | {ratio['train']:.3f} | "
                         f"{ratio['eval']:.3f} | {ratio['train_cpu']:.3f} | {ratio['eval_cpu']:.3f} | "
                         f"{ratio['one_token_cpu']:.3f} |")
        last = model["ratio_to_seqlora"][f"amlora x{LORA_COUNTS[-1]}"]
        for clock, suffix in (("wall-clock", ""), ("CPU-time", "_cpu")):
            train, evaluation = last["train" + suffix], last["eval" + suffix]
            met = train <= TARGET["train"] and evaluation <= TARGET["eval"]
            lines.append(f"- target with {LORA_COUNTS[-1]} LoRAs, {clock} ratios: {'met' if met else 'NOT met'} "
                         f"(train {train:.3f}x, eval {evaluation:.3f}x)")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "random-1024"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--out", default=str(HERE / "amlora_speed"), help="output path without extension")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.time()
    models = [bench_model(spec, args.reps, args.batch, args.seq_len) for spec in args.models]
    result = {"batch_size": args.batch, "seq_len": args.seq_len, "reps": args.reps, "threads": torch.get_num_threads(),
              "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
              "total_s": round(time.time() - started, 1), "models": models}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
