"""Speed and memory of every method relative to `seqlora`, and `seqlora` relative to a plain peft LoRA (the peer).

    python bench/speed.py [--model smollm2-135m] [--methods ...] [--tasks 4] [--reps 5] [--batch 8] [--seq-len 48]
                          [--group-size 8]

Each method is set up through its own class exactly as the loop does (setup, then before_task/train_examples/
after_task for the earlier tasks of a demo stream, then before_task/train_examples of the last one), on its own copy
of the backbone, and timed on the same batches in one process with interleaved repetitions (medians), in groups of
``--group-size`` methods beside seqlora and the peer (all variants at once would not fit in 24 GiB). Peak memory
is the peak RSS (VmHWM) of a separate process per variant (setup + 3 training steps + one generation), since RSS
peaks cannot be told apart inside one process. The peer computes its loss like every method (``models.lm_forward``:
the answer positions' logits, passed through peft to its base model), so seqlora/peer compares the two LoRA
implementations alone. Writes bench/SPEED.md and bench/speed.json.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from continual_lm.config import RunConfig  # noqa: E402
from continual_lm.data.collate import Collator  # noqa: E402
from continual_lm.data.demo import demo_tasks  # noqa: E402
from continual_lm.methods.base import RunContext, TrainExample, build_method  # noqa: E402
from continual_lm.models.backbone import load_backbone  # noqa: E402

PEER = "peft-lora"


def default_methods() -> list[str]:
    sys.path.insert(0, str(HERE))
    from reproduce import VARIANTS, default_methods  # the harness' list: every registered method

    # references train like seqlora; named variants (other options of a listed method) cost what their method costs
    return [m for m in default_methods() if m not in ("single", "mtl") and m not in VARIANTS]


class Variant:
    def __init__(self, spec: str, backbone, tasks, batch_size: int, seq_len: int):
        from accelerate import Accelerator

        self.label = spec
        self.model = copy.deepcopy(backbone.model)
        self.tokenizer = backbone.tokenizer
        collator = Collator(backbone.tokenizer, backbone.is_seq2seq, seq_len, 8)
        # SAPT's generator only makes the pseudo inputs the timed step uses: a few steps are enough here
        options = {spec: {"generator_steps": 2}} if spec.startswith("sapt") else {}
        config = RunConfig(method="seqlora" if spec == PEER else spec, model=backbone.name, batch_size=batch_size,
                           method_options=options, progress=False)
        if spec == PEER:
            from peft import LoraConfig, get_peft_model

            from continual_lm.models.backbone import default_lora_targets

            lora = config.lora
            self.model = get_peft_model(self.model, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                               lora_dropout=lora.dropout,
                                                               target_modules=default_lora_targets(self.model)))
            self.method = build_method(config)  # only its plain forward (lm_forward, through peft too)/generate
        else:
            self.method = build_method(config)
            config.lr = self.method.default_lr()  # as the loop resolves it (SAPT's generator reads it)
            self.method.tasks = tasks
            self.method.context = RunContext(config, tasks, collator, Accelerator(cpu=True), Path("/tmp"))
            self.method.setup(self.model, backbone)
            for i, task in enumerate(tasks):
                self.method.before_task(self.model, i, task)
                examples = [TrainExample(i, ex) for ex in task.train[:8]]
                self.method.train_examples(i, examples)  # as the loop before training a phase (InfLoRA designs A)
                if i < len(tasks) - 1:
                    self.method.after_task(self.model, i, task, examples)
        for module in self.model.modules():  # no early stop: every variant decodes exactly the same number of tokens
            if getattr(module, "generation_config", None) is not None:
                module.generation_config.eos_token_id = None
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)

    def train_step(self, batch) -> float:
        start = time.perf_counter()
        self.method.before_forward(self.model, batch)
        outputs = self.method.forward(self.model, batch)
        loss = outputs.loss
        extra = self.method.extra_loss(self.model, batch, outputs)
        (loss + extra if extra is not None else loss).backward()
        self.method.after_backward(self.model)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.method.after_optimizer_step(self.model, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    @torch.no_grad()
    def eval_throughput(self, batch) -> float:
        self.model.eval()
        start = time.perf_counter()
        self.method.generate(self.model, batch, 8)
        elapsed = time.perf_counter() - start
        self.model.train()
        return batch["input_ids"].shape[0] / elapsed


def batches(tokenizer, is_seq2seq: bool, tasks, batch_size: int, seq_len: int):
    collator = Collator(tokenizer, is_seq2seq, seq_len, 8)
    task = tasks[-1]
    train = collator.train_batch([collator.encode_train(task, ex, len(tasks) - 1) for ex in task.train[:batch_size]])
    prompts = collator.generation_batch([collator.encode_prompt(task, ex) for ex in task.test[:batch_size]])
    return train, prompts


def measure_memory(spec: str, args) -> float:
    """Peak RSS (MiB) of a fresh process doing setup + 3 training steps + one generation for ``spec``."""
    out = subprocess.run([sys.executable, __file__, "--memory-of", spec, "--model", args.model, "--tasks",
                          str(args.tasks), "--batch", str(args.batch), "--seq-len", str(args.seq_len)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return float(out.stdout.strip().splitlines()[-1])


def memory_child(args) -> None:
    torch.manual_seed(0)
    backbone = load_backbone(args.model)
    tasks = demo_tasks(n_train=16, n_test=16)[: args.tasks]
    variant = Variant(args.memory_of, backbone, tasks, args.batch, args.seq_len)
    train, prompts = batches(backbone.tokenizer, backbone.is_seq2seq, tasks, args.batch, args.seq_len)
    del backbone
    for _ in range(3):
        variant.train_step(train)
    variant.eval_throughput(prompts)
    print(round(peak_rss_mib(), 1))


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space, which execve replaces, whereas
    getrusage's ru_maxrss survives execve on Linux and would report the parent's peak (the fork before exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_group(specs: list[str], backbone, tasks, train, prompts, args) -> tuple[dict, dict]:
    """Per variant: training step seconds and evaluation samples/s, ``args.reps`` interleaved repetitions after a
    warm-up; the variants (and their backbone copies) are freed on return."""
    variants = [Variant(spec, backbone, tasks, args.batch, args.seq_len) for spec in specs]
    step = {v.label: [] for v in variants}
    throughput = {v.label: [] for v in variants}
    for v in variants:  # warm-up
        v.train_step(train)
        v.eval_throughput(prompts)
    for rep in range(args.reps):
        order = variants[rep % len(variants):] + variants[: rep % len(variants)]
        for v in order:
            step[v.label].append(v.train_step(train))
            throughput[v.label].append(v.eval_throughput(prompts))
    del variants
    gc.collect()
    return step, throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--tasks", type=int, default=4, help="tasks learned before the measured one (+1)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--group-size", type=int, default=8,
                        help="methods timed together (interleaved, beside seqlora and the peer); bounds memory")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)
    if args.memory_of:
        memory_child(args)
        return 0
    load_avg = os.getloadavg()
    torch.manual_seed(0)
    backbone = load_backbone(args.model)
    tasks = demo_tasks(n_train=16, n_test=16)[: args.tasks]
    others = [m for m in (args.methods or default_methods()) if m not in ("seqlora", PEER)]
    specs = [PEER, "seqlora"] + others
    train, prompts = batches(backbone.tokenizer, backbone.is_seq2seq, tasks, args.batch, args.seq_len)
    # Every variant holds its own copy of the backbone (full fine-tuning ones also their optimizer's moments), so all
    # of them at once do not fit in 24 GiB: methods are timed in groups, each beside its own seqlora (and peer),
    # interleaved, and "vs seqlora" is against the seqlora of the same group.
    step, throughput, group_of = {}, {}, {}
    chunks = [others[k:k + args.group_size] for k in range(0, len(others), args.group_size)] or [[]]
    for number, chunk in enumerate(chunks):
        timed_step, timed_tp = time_group([PEER, "seqlora"] + chunk, backbone, tasks, train, prompts, args)
        for spec in ([PEER, "seqlora"] if number == 0 else []) + chunk:
            step[spec], throughput[spec] = timed_step[spec], timed_tp[spec]
            group_of[spec] = {"group": number, "seqlora_step": statistics.median(timed_step["seqlora"]),
                              "seqlora_tp": statistics.median(timed_tp["seqlora"])}
    memory = {} if args.no_memory else {spec: measure_memory(spec, args) for spec in specs}
    rows = []
    base_step = statistics.median(step["seqlora"])
    for spec in specs:
        s, tp, group = statistics.median(step[spec]), statistics.median(throughput[spec]), group_of[spec]
        rows.append({"method": spec, "group": group["group"], "train_step_s": round(s, 4),
                     "train_step_vs_seqlora": round(s / group["seqlora_step"], 3),
                     "eval_samples_per_s": round(tp, 2), "eval_vs_seqlora": round(tp / group["seqlora_tp"], 3),
                     "peak_rss_mib": memory.get(spec), "rss_vs_seqlora":
                         round(memory[spec] / memory["seqlora"], 3) if memory else None})
    info = {"model": args.model, "tasks": args.tasks, "batch": args.batch, "seq_len": args.seq_len, "reps": args.reps,
            "group_size": args.group_size,
            "threads": torch.get_num_threads(), "load_avg_at_start": [round(x, 2) for x in load_avg],
            "python": platform.python_version(), "torch": torch.__version__,
            "peer_ratio_seqlora_over_peft": round(base_step / statistics.median(step[PEER]), 3), "rows": rows}
    out = Path(args.out)
    (out / "speed.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = ["# Speed and memory per method (`python bench/speed.py`)", "",
             f"Model {args.model}, {args.tasks} tasks learned (measured on the last), batch {args.batch} x "
             f"{args.seq_len} tokens, {args.reps} interleaved repetitions (medians), {info['threads']} threads, "
             f"load average at start {info['load_avg_at_start']}. Evaluation = greedy generation of exactly 8 new "
             f"tokens per prompt (EOS disabled, so no variant stops early); peak RSS = VmHWM of a fresh process doing "
             f"the method's setup, 3 training steps and one generation. Methods are timed in groups of up to "
             f"{args.group_size} (memory), each beside its own seqlora and peer; 'vs seqlora' is against the seqlora "
             f"of the same group (column 'group').", "",
             f"**seqlora / peft LoRA training step: {info['peer_ratio_seqlora_over_peft']}x** (target <= 1.05x)", "",
             "| method | group | train step (s) | vs seqlora | eval (samples/s) | vs seqlora | peak RSS (MiB) | vs seqlora |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['group']} | {r['train_step_s']:.3f} | {r['train_step_vs_seqlora']:.2f} | "
                     f"{r['eval_samples_per_s']:.1f} | {r['eval_vs_seqlora']:.2f} | "
                     f"{r['peak_rss_mib'] or '–'} | {r['rss_vs_seqlora'] or '–'} |")
    (out / "SPEED.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
