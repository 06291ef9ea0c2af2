"""N-LoRA's L1 weight against its two penalties on SmolLM2-135M: why `--nlora-lambda1` defaults to 1e-3.

    python bench/nlora_lambda.py [--steps 16] [--model smollm2-135m]

The reference scripts use lambda1 = 0.4 with the reference code's term ||A B||_1 (an r x r matrix); the paper's term
is the update ||B A||_1 (d_out x d_in entries, about 10^3-10^4 times larger). One N-LoRA LoRA is trained on the
demo stream's first task (8 examples, batch 4, AdamW lr 1e-3, clipping 1.0, the same seed) for --steps steps per
setting; the table shows the task loss and the L1 of the update B A (all adapted projections) along the way. The
code's term needs square projections, so that row penalises the q_proj LoRAs only (SmolLM2's v_proj is 576 -> 192).
Writes bench/nlora_lambda.md and bench/nlora_lambda.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from continual_lm.config import RunConfig  # noqa: E402
from continual_lm.data.collate import Collator  # noqa: E402
from continual_lm.methods.base import RunContext, TrainExample, build_method  # noqa: E402
from continual_lm.methods.nlora import update_l1  # noqa: E402
from continual_lm.models.backbone import load_backbone  # noqa: E402
from continual_lm.data.stream import load_stream_for  # noqa: E402

SETTINGS = [(0.0, "delta"), (0.4, "delta"), (1e-3, "delta"), (1e-4, "delta"), (0.4, "code")]


def train(model_name: str, lam: float, penalty: str, steps: int) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    backbone = load_backbone(model_name, seed=0)
    config = RunConfig(benchmark="demo", method="nlora", model=model_name, tasks=["sentiment"], max_train_per_task=8,
                       batch_size=4, max_input_length=64, progress=False, method_options={"nlora": {"lambda1": 0.0}})
    method = build_method(config)
    method.tasks = load_stream_for(config).tasks
    collator = Collator(backbone.tokenizer, backbone.is_seq2seq, 64, 6)
    method.context = RunContext(config, method.tasks, collator, SimpleNamespace(device=torch.device("cpu")), HERE)
    model = backbone.model
    method.setup(model, backbone)
    method.before_task(model, 0, method.tasks[0])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    batches = list(method.context.train_batches([TrainExample(0, e) for e in method.tasks[0].train]))
    banks = list(method.banks.values())
    square = [b for b in banks if b.in_features == b.out_features]
    log = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        outputs = method.forward(model, batch)
        term = update_l1(banks, "delta") if penalty == "delta" else update_l1(square, "code")
        (outputs.loss + lam * term).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            log.append((round(outputs.loss.item(), 4), round(update_l1(banks, "delta").item(), 2)))
    return log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [{"lambda1": lam, "penalty": penalty, "log": train(args.model, lam, penalty, args.steps)}
            for lam, penalty in SETTINGS]
    info = {"model": args.model, "steps": args.steps, "threads": torch.get_num_threads(),
            "wall_s": round(time.perf_counter() - start, 1), "rows": rows}
    out = Path(args.out)
    (out / "nlora_lambda.json").write_text(json.dumps(info, indent=1) + "\n")
    shown = sorted({0, 1, 3, 7, args.steps - 1} & set(range(args.steps)))
    lines = ["# N-LoRA: L1 weight and penalty (`python bench/nlora_lambda.py`)", "",
             f"Model {args.model}, one LoRA on the demo task `sentiment` (8 examples, batch 4, AdamW lr 1e-3), "
             f"{args.steps} steps per setting, same seed; {info['threads']} threads, {info['wall_s']} s in all. "
             "Cells: the task loss of the step's batch (before its update) / ||B A||_1 summed over the adapted projections "
             "after the step.", "",
             "| lambda1 | penalty | " + " | ".join(f"step {s + 1}" for s in shown) + " |",
             "| ---: | --- | " + " | ".join("---" for _ in shown) + " |"]
    for row in rows:
        cells = [f"{row['log'][s][0]:.2f} / {row['log'][s][1]:.0f}" for s in shown]
        lines.append(f"| {row['lambda1']:g} | {row['penalty']} | " + " | ".join(cells) + " |")
    lines += ["", "`code` penalises the q_proj LoRAs only (the reference's ||A B||_1 needs square projections).", ""]
    (out / "nlora_lambda.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
