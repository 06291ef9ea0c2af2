"""Per-process training memory of LLaMA-2-7B full fine-tuning under each engine, from `continual-lm plan` (an
estimate built on the meta device; formulas in docs/scaling.md): bfloat16, 8 processes, batch 1 x 512 tokens with
gradient checkpointing.

    python bench/plan_engines.py

Writes bench/plan_engines.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from continual_lm.io_utils import atomic_write_text  # noqa: E402
from continual_lm.plan import ENGINES, plan  # noqa: E402


def main() -> None:
    plans = {e: plan("llama-2-7b", "seqft", 15, dtype="bfloat16", batch_size=1, seq_len=512,
                     gradient_checkpointing=True, engine=e, processes=1 if e == "single" else 8) for e in ENGINES}
    terms = [t for t in dict.fromkeys(k for p in plans.values() for k in p.memory) if t != "total"] + ["total"]
    lines = ["# LLaMA-2-7B full fine-tuning: training memory per process by engine (`continual-lm plan`)", "",
             "`python bench/plan_engines.py` · seqft, bfloat16, 8 processes (single: 1), batch 1 x 512 (answers of 50 "
             "tokens), gradient checkpointing · GiB, an estimate (docs/scaling.md)", "",
             "| term | " + " | ".join(ENGINES) + " |", "| --- |" + " ---: |" * len(ENGINES)]
    for term in terms:
        cells = [f"{p.memory[term] / 2**30:.2f}" if term in p.memory else "-" for p in plans.values()]
        lines.append(f"| {term} | " + " | ".join(cells) + " |")
    atomic_write_text(HERE / "plan_engines.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
