"""EPI's task identification with a real frozen backbone: accuracy of the Mahalanobis selector on the test inputs.

    python bench/epi_task_identification.py [--model smollm2-135m] [--data-dir ../shared/data]
                                             [--max-train 64] [--max-test 32] [--streams demo standard long]

The selector only needs the frozen backbone's representations (no prompt is trained: EPI's statistics and its
choice of prompt do not depend on the prompts), so this measures exactly what `--method epi` would select, on
  * the demo stream and the `standard` (order 1) and `long` (order 4) CL_Benchmark streams (if --data-dir has them),
  * two inputs: the prompt the model receives (instruction + options + input + "Answer:", what `epi` uses) and the
    raw input text alone (no instruction: closer to the paper's BERT setting, where inputs carry no task hint),
  * shrinkage of the shared covariance 0 (the reference's plain pinv), 0.01, 0.1 (the default), 0.5, and the
    Euclidean nearest class mean as a baseline.
Accuracy is not a timing, so no repetitions are needed; the load average is recorded anyway. Writes
bench/epi_task_identification.md and .json next to this script.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from continual_lm.config import RunConfig
from continual_lm.data.benchmarks import load_stream
from continual_lm.data.collate import Collator, Encoded
from continual_lm.methods.epi import MahalanobisSelector
from continual_lm.models.backbone import load_backbone

HERE = Path(__file__).resolve().parent
SHRINKAGES = (0.0, 0.01, 0.1, 0.5)


@torch.no_grad()
def representations(model, collator: Collator, task, texts: list[str], raw: bool, batch_size: int = 16):
    """EPI's representation (mean-pooled last hidden state of the frozen backbone), as `EPI.representation`."""
    from continual_lm.methods.epi import EPI

    epi = EPI(RunConfig(method="epi"))
    epi.is_seq2seq = collator.is_seq2seq
    rows = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        if raw:
            encoded = [Encoded(collator.tokenizer(t, add_special_tokens=True)["input_ids"][:collator.max_input_length])
                       for t in chunk]
        else:
            encoded = [collator.encode_prompt(task, SimpleNamespace(input=t)) for t in chunk]
        batch = collator.generation_batch(encoded)
        rows.append(epi.representation(model, batch["input_ids"], batch["attention_mask"]))
    return torch.cat(rows)


def evaluate(train_features, train_classes, test_features) -> dict[str, float]:
    truth = torch.cat([torch.full((len(f),), t) for t, f in enumerate(test_features)])
    features = torch.cat(test_features)
    result = {}
    for shrinkage in SHRINKAGES:
        selector = MahalanobisSelector(shrinkage)
        for feats, classes in zip(train_features, train_classes):
            selector.add_task(feats, classes)
        result[f"mahalanobis_shrinkage_{shrinkage}"] = round(100 * (selector.select(features) == truth).float().mean().item(), 2)
    distances = torch.stack([torch.cdist(features, m).min(dim=1).values for m in selector.means], dim=1)
    result["euclidean_nearest_mean"] = round(100 * (distances.argmin(1) == truth).float().mean().item(), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--max-train", type=int, default=64)
    parser.add_argument("--max-test", type=int, default=32)
    parser.add_argument("--streams", nargs="+", default=["demo", "standard"], choices=["demo", "standard", "long"],
                        help="demo; standard = CL_Benchmark order 1; long = order 4 (15 tasks: slow on a CPU)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    torch.manual_seed(0)
    backbone = load_backbone(args.model, seed=0)
    model = backbone.model.eval()
    collator = Collator(backbone.tokenizer, backbone.is_seq2seq, 128, 8)
    orders = {"demo": "1", "standard": "1", "long": "4"}
    streams = [(name, orders[name]) for name in args.streams
               if name == "demo" or Path(args.data_dir, "CL_Benchmark").is_dir()]
    results = []
    for benchmark, order in streams:
        tasks = load_stream(benchmark, order, data_dir=args.data_dir if benchmark != "demo" else None,
                            max_train=args.max_train, max_test=args.max_test, seed=0)
        for raw in (False, True):
            start = time.perf_counter()
            train = [representations(model, collator, t, [e.input for e in t.train], raw) for t in tasks]
            classes = [[e.target for e in t.train] if t.labels else None for t in tasks]
            test = [representations(model, collator, t, [e.input for e in t.test], raw) for t in tasks]
            row = {"stream": f"{benchmark} order {order}", "tasks": len(tasks), "input": "raw input" if raw else "prompt",
                   **evaluate(train, classes, test), "seconds": round(time.perf_counter() - start, 1)}
            print(row, flush=True)
            results.append(row)
    meta = {"model": args.model, "max_train_per_task": args.max_train, "max_test_per_task": args.max_test,
            "hidden_size": int(model.get_input_embeddings().weight.shape[1]), "load_average_at_start": load_at_start,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}
    (HERE / "epi_task_identification.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    keys = [f"mahalanobis_shrinkage_{s}" for s in SHRINKAGES] + ["euclidean_nearest_mean"]
    lines = [
        "# EPI task identification (`bench/epi_task_identification.py`)", "",
        f"Accuracy (%) of choosing the right task's prompt on the test inputs, from the frozen `{args.model}` "
        f"(mean-pooled last hidden state, H = {meta['hidden_size']}); {args.max_train} training / {args.max_test} test "
        f"examples per task. Load average at start: {', '.join(f'{x:.2f}' for x in load_at_start)}. "
        "`prompt` = what `--method epi` encodes (instruction + options + input + cue); `raw input` = the example "
        "text alone. Columns: shrinkage of the shared covariance (`--epi-shrinkage`; 0 = the reference's pinv), "
        "and the Euclidean nearest class mean.", "",
        "| stream | tasks | input | " + " | ".join(k.replace("mahalanobis_shrinkage_", "maha a=").replace(
            "euclidean_nearest_mean", "euclidean") for k in keys) + " |",
        "| --- | ---: | --- | " + " | ".join("---:" for _ in keys) + " |",
    ]
    for row in results:
        lines.append(f"| {row['stream']} | {row['tasks']} | {row['input']} | "
                     + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    (HERE / "epi_task_identification.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
