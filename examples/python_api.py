"""continual_lm from Python: a stream defined in code, a small method of your own, a callback, and the results.

    python examples/python_api.py                                  # SmolLM2-135M, about a minute on a CPU
    python examples/python_api.py --model tiny-random-llama        # a tiny random model: seconds (a smoke test)

The method, ``seqlora-anchor``, is SeqLoRA (one LoRA through the whole stream) with an L2 pull towards the LoRA's
values at the start of each task (as L2-SP anchors fine-tuning to its starting point): a one-term regulariser
against forgetting. It is registered with ``@register_method``, without touching continual_lm's own registry, and
runs through the same loop, checkpoints and reports as the shipped methods (docs/api.md).
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import continual_lm
from continual_lm import Callback, Stream, register_method, task_from_records
from continual_lm.methods.base import LoRAMethod


@dataclass
class AnchorOptions:
    weight: float = 0.1  # strength of the pull towards the task's starting LoRA (--seqlora-anchor-weight)


@register_method
class SeqLoRAAnchor(LoRAMethod):
    name = "seqlora-anchor"
    description = "one LoRA through the stream, pulled towards its values at the start of each task (L2)"
    Options = AnchorOptions

    def setup(self, model, backbone):
        super().setup(model, backbone)  # LoRA banks on the target projections, backbone frozen
        self.add_task_lora()
        for bank in self.banks.values():
            bank.lora_A[0].requires_grad_(True)
            bank.lora_B[0].requires_grad_(True)

    def before_task(self, model, task_index, task):
        self.anchor = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def extra_loss(self, model, batch, outputs):
        drift = sum(((p - self.anchor[name]) ** 2).sum() for name, p in model.named_parameters() if name in self.anchor)
        return self.options.weight * drift


class ForgettingWatch(Callback):
    """Prints, after each evaluation, how far each earlier task fell below its best score so far."""

    def __init__(self):
        self.best: dict[str, float] = {}
        self.lines: list[str] = []

    def on_phase_evaluated(self, run, phase, evaluation):
        drops = []
        for task, score in zip(evaluation.tasks, evaluation.scores):
            best = self.best.get(task.name, score)
            if score < best:
                drops.append(f"{task.name} -{best - score:.1f}")
            self.best[task.name] = max(best, score)
        self.lines.append(f"after task {phase.row + 1}: {', '.join(drops) or 'nothing forgotten'}")
        print(f"[watch] {self.lines[-1]}")


def arithmetic_stream(examples: int = 32, seed: int = 0) -> Stream:
    """Two tasks with short answers, generated in code: the parity of a number, and the larger of two numbers."""
    rng = random.Random(seed)

    def records(make):
        return [make(rng.randrange(100), rng.randrange(100)) for _ in range(examples)]

    def parity(a, b):
        return {"input": str(a), "output": "even" if a % 2 == 0 else "odd"}

    def larger(a, b):
        return {"input": f"{a} or {b}", "output": str(max(a, b))}

    return Stream([
        task_from_records("parity", records(parity), test_fraction=0.25, labels="auto",
                          instruction="Is the number even or odd?"),
        task_from_records("larger", records(larger), test_fraction=0.25, instruction="Which number is larger?",
                          metric="accuracy"),
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--output-dir", default="runs/python-api")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    watch = ForgettingWatch()
    results = continual_lm.run(method="seqlora-anchor", method_options={"seqlora-anchor": {"weight": 0.05}},
                               model=args.model, epochs=args.epochs, lr=2e-3, batch_size=8, max_input_length=48,
                               max_target_length=4, progress=False, stream=arithmetic_stream(),
                               callbacks=[watch], output_dir=args.output_dir, overwrite=True)
    print(f"AP {results['metrics']['AP']:.2f}, BWT {results['metrics']['BWT']}, final scores {results['final_scores']}")

    run = continual_lm.load_run(args.output_dir)  # the final model, ready to predict without a task id
    print("prediction for '36' with the parity task's template:", run.predict([{"input": "36", "task": "parity"}]))
    return {"results": results, "watch": watch.lines}


if __name__ == "__main__":
    main()
