"""`continual-lm plan`: parameter counts and a training-memory estimate, without loading any weights.

The model is built from its config on the meta device (shapes only, no memory), then the real method runs
``setup`` and ``before_task`` for every phase of its schedule, exactly as the loop does, so the counts are those
of a real run of any method. Memory per process (no sharding; bytes per value b = 4 float32, 2 bfloat16/float16):

    weights      = P_total * b                      every parameter after N tasks (frozen base + all PET blocks)
    gradients    = P_train * b                      P_train = parameters trained in the largest phase
    optimizer    = 2 * P_train * b                  AdamW exp_avg + exp_avg_sq (kept in the parameter dtype)
    activations  = L * B * S * H * (34 + 5 * A * S / H) * b / 2     (Korthikanti et al. 2022, eager attention;
                   a rough upper bound: SDPA/flash attention drop the 5*A*S/H term); with gradient checkpointing
                   = L * B * S * H * b + one layer's term above      (each layer's input is kept, one layer is
                   recomputed at a time)
    logits       = 2 * B * K * V * 4                float32 logits and their gradient for the loss, at the K positions
                   the loss reads (models/lm_forward.py): K = T answer tokens for seq2seq models, at most
                   min(S, B * T) (the union of the batch's answer positions) for causal LMs, S for models
                   without ``logits_to_keep``

with L layers (encoder + decoder for seq2seq), hidden size H, A attention heads, vocabulary V, batch B,
sequence length S and answer length T. Buffers, the CUDA context, allocator fragmentation and evaluation are not
counted.

With ``engine`` and N ``processes`` (train/engine.py): DeepSpeed ZeRO-2 divides gradients and optimizer states by
N and keeps them in float32 (AdamW states 8 bytes, plus 4-byte master weights when the model is bf16/fp16);
ZeRO-3 adds a partitioned copy of the weights (P_total * b / N) beside the whole model and divides gradients
too; FSDP2 likewise, with the optimizer states in the parameter dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ContinualLMError

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENGINES = ("single", "ddp", "deepspeed-zero2", "deepspeed-zero3", "fsdp")  # as results.json names them


def _llama_2_7b():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def _t5_large():
    from transformers import T5Config

    return T5Config(d_model=1024, d_ff=4096, num_layers=24, num_decoder_layers=24, num_heads=16, d_kv=64,
                    vocab_size=32128, tie_word_embeddings=True)


PRESETS = {"llama-2-7b": _llama_2_7b, "t5-large": _t5_large}  # offline: shapes from the published configs


@dataclass
class Plan:
    model: str
    method: str
    tasks: int
    dtype: str
    frozen: int  # parameters never trained
    total: int  # all parameters after the last phase
    trainable_per_phase: list[int]  # parameters that require grad in each phase
    checkpoint_bytes_per_phase: list[int]  # what the loop saves after each phase (every ever-trainable parameter)
    memory: dict[str, int] = field(default_factory=dict)  # bytes, see the module docstring
    engine: str = "single"
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_config(spec: str, trust_remote_code: bool = False):
    if spec.lower() in PRESETS:
        return PRESETS[spec.lower()]()
    from .models.backbone import load_model_config

    return load_model_config(spec, trust_remote_code=trust_remote_code)


def _dims(config) -> tuple[int, int, int, int]:
    """(layers, hidden, heads, vocab) of a causal or encoder-decoder config."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 0)
    if getattr(config, "is_encoder_decoder", False):
        layers = getattr(config, "num_layers", 0) + (getattr(config, "num_decoder_layers", None) or layers)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "num_heads")
    return layers, hidden, heads, config.vocab_size


def activation_bytes(config, batch_size: int, seq_len: int, dtype: str, gradient_checkpointing: bool) -> int:
    layers, hidden, heads, _ = _dims(config)
    per_layer = batch_size * seq_len * hidden * (34 + 5 * heads * seq_len / hidden) * BYTES[dtype] / 2
    if gradient_checkpointing:
        return int(layers * batch_size * seq_len * hidden * BYTES[dtype] + per_layer)
    return int(layers * per_layer)


def plan(model: str, method: str, tasks: int, *, lora_r: int | None = None, lora_targets: list[str] | None = None,
         batch_size: int = 8, seq_len: int = 512, target_len: int = 50, dtype: str = "float32",
         gradient_checkpointing: bool = False, method_options: dict | None = None, trust_remote_code: bool = False,
         engine: str = "single", processes: int = 1) -> Plan:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from .config import LoRAConfig, RunConfig
    from .data.tasks import Task
    from .methods.base import RunContext, build_method

    if not isinstance(tasks, int) or tasks <= 0:
        raise ContinualLMError(f"--tasks must be a positive integer, got {tasks!r}")
    if dtype not in BYTES:
        raise ContinualLMError(f"--dtype must be one of {', '.join(BYTES)}, got {dtype!r}")
    if engine not in ENGINES:
        raise ContinualLMError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "single" and processes != 1:
        raise ContinualLMError(f"--engine single runs 1 process, not --processes {processes}")
    for name, value in (("--batch-size", batch_size), ("--seq-len", seq_len), ("--target-len", target_len),
                        ("--processes", processes)):
        if not isinstance(value, int) or value <= 0:
            raise ContinualLMError(f"{name} must be a positive integer, got {value!r}")
    lora = LoRAConfig(targets=lora_targets) if lora_r is None else LoRAConfig(r=lora_r, targets=lora_targets)
    config = RunConfig(method=method, model=model, lora=lora, method_options=method_options or {}, dtype=dtype)
    config.validate()
    runner = build_method(config)
    model_config = load_config(model, trust_remote_code)
    stream = [Task(name=f"task{i + 1}", kind="generation", metric="rougeL", instruction="", train=[], test=[])
              for i in range(tasks)]
    auto = AutoModelForSeq2SeqLM if getattr(model_config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        net = auto.from_config(model_config, dtype=getattr(torch, dtype))
        runner.tasks = stream
        runner.context = RunContext(config, stream, None, None, None)
        runner.setup(net, None)
        touched: set[int] = set()
        trainable, checkpoint = [], []
        for phase in runner.schedule(tasks, False):
            runner.before_task(net, phase.row, stream[phase.row])
            live = [p for p in net.parameters() if p.requires_grad]
            touched |= {id(p) for p in live}
            trainable.append(sum(p.numel() for p in live))
            checkpoint.append(sum(p.numel() * p.element_size() for p in net.parameters() if id(p) in touched))
    params = list(net.parameters())
    total = sum(p.numel() for p in params)
    frozen = sum(p.numel() for p in params if id(p) not in touched)
    b, most = BYTES[dtype], max(trainable)
    _, _, _, vocab = _dims(model_config)
    memory = {"weights": total * b, **_training_state_bytes(engine, processes, total, most, b),
              "activations": activation_bytes(model_config, batch_size, seq_len, dtype, gradient_checkpointing),
              "logits": 2 * batch_size * logit_positions(net, batch_size, seq_len, target_len) * vocab * 4}
    memory["total"] = sum(memory.values())
    return Plan(model, method, tasks, dtype, frozen, total, trainable, checkpoint, memory, engine, processes)


def logit_positions(net, batch_size: int, seq_len: int, target_len: int) -> int:
    """Positions per example whose logits the training loss computes (module docstring, "logits")."""
    from .models.lm_forward import keeps_answer_logits

    if getattr(net.config, "is_encoder_decoder", False):
        return min(seq_len, target_len)
    return min(seq_len, batch_size * target_len) if keeps_answer_logits(type(net)) else seq_len


def _training_state_bytes(engine: str, n: int, total: int, most: int, b: int) -> dict[str, int]:
    """Per-process bytes of what training adds to the whole model's weights, by engine (module docstring)."""
    if engine in ("single", "ddp"):
        return {"gradients": most * b, "optimizer": 2 * most * b}
    state = {}
    if engine in ("deepspeed-zero3", "fsdp"):
        state["weights, partitioned copy"] = total * b // n
    state["gradients"] = most * b // n
    if engine.startswith("deepspeed"):  # float32 AdamW states, and float32 master weights of a half model
        state["optimizer"] = most * (8 + (4 if b < 4 else 0)) // n
    else:
        state["optimizer"] = 2 * most * b // n
    return state


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def format_plan(result: Plan, batch_size: int, seq_len: int) -> str:
    per_task = result.trainable_per_phase
    lines = [
        f"model {result.model}, method {result.method}, {result.tasks} tasks, dtype {result.dtype}",
        "",
        "| parameters | count |",
        "| --- | ---: |",
        f"| frozen (never trained) | {result.frozen:,} |",
        f"| trainable in phase 1 | {per_task[0]:,} |",
        f"| trainable in the last phase | {per_task[-1]:,} |",
        f"| total after {result.tasks} tasks | {result.total:,} |",
        f"| checkpoint after the last phase | {result.checkpoint_bytes_per_phase[-1]:,} bytes |",
        "",
        f"| training memory per process ({result.engine}, {result.processes} process"
        f"{'es' if result.processes > 1 else ''}, batch {batch_size} x {seq_len} tokens) | estimate |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {_gib(value)} |" for name, value in result.memory.items()]
    lines.append("\nformulas: docs/scaling.md (activations are a rough upper bound)")
    return "\n".join(lines)


def add_plan_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="llama-2-7b | t5-large (offline presets), an alias "
                        "(smollm2-135m, tiny-random-llama, ...), a local folder or config.json, or a hub id (online)")
    parser.add_argument("--method", required=True, help="any method spec of `run`, e.g. inclora, amlora+ewc")
    parser.add_argument("--tasks", type=int, required=True, help="number of tasks in the stream")
    parser.add_argument("--lora-r", type=int, default=None)
    parser.add_argument("--lora-targets", nargs="+", default=None, help="module-name suffixes (default: q and v)")
    parser.add_argument("--batch-size", type=int, default=8, help="per-process training batch size")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per training example (padded length)")
    parser.add_argument("--target-len", type=int, default=50,
                        help="answer tokens per example (run's --max-target-length; the loss's logits)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 weights")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--engine", default="single", help=f"{' | '.join(ENGINES)} (the memory estimate per process)")
    parser.add_argument("--processes", type=int, default=1, help="number of processes (GPUs) of --engine")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def cmd_plan(args) -> int:
    import json
    from pathlib import Path

    model = args.model
    if Path(model).name == "config.json" and Path(model).is_file():
        model = str(Path(model).parent)  # a config.json path: its folder is what the loaders read
    targets = [t for item in args.lora_targets for t in item.split(",") if t] if args.lora_targets else None
    result = plan(model, args.method, args.tasks, lora_r=args.lora_r, lora_targets=targets,
                  batch_size=args.batch_size, seq_len=args.seq_len, target_len=args.target_len, dtype=args.dtype,
                  gradient_checkpointing=args.gradient_checkpointing, trust_remote_code=args.trust_remote_code,
                  engine=args.engine, processes=args.processes)
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_plan(result, args.batch_size, args.seq_len))
    return 0
