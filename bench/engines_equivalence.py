"""The engine checks that are too slow for CI, on 2 CPU processes (gloo), tiny-random-llama, 2 demo tasks:

* every method but MIGU under DeepSpeed ZeRO-2 against the same run under DDP (both reduce the same gradients);
* moelora under FSDP2 and inclora+replay under ZeRO-3, against DDP;
* --mixed-precision bf16 under FSDP2, ZeRO-3 and ZeRO-2 (--dtype bfloat16), against the float32 DDP run.

    python bench/engines_equivalence.py [--methods olora sapt-lora ...]

Needs deepspeed. accelerate never selects DeepSpeed/FSDP on a CPU, so the launches put the tests' sitecustomize
(tests/engines_on_cpu) on PYTHONPATH, as tests/test_engines.py does. Writes bench/engines_equivalence.md and .json;
runs go to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from continual_lm.io_utils import atomic_write_json, atomic_write_text  # noqa: E402

CONFIGS = ROOT / "continual_lm" / "accelerate_configs"
METHODS = ["olora", "sapt-lora", "sapt-prompt", "lfpt5", "epi", "progprompt", "moelora", "seqlora+ewc",
           "seqlora+replay", "mtl", "single", "seqft"]
SETTINGS = ["--benchmark", "demo", "--model", "tiny-random-llama", "--seed", "3", "--tasks", "sentiment",
            "number_sign", "--max-train-per-task", "16", "--max-test-per-task", "3", "--max-target-length", "4",
            "--max-input-length", "64", "--eval-batch-size", "1", "--lr", "5e-3", "--scheduler", "linear",
            "--lora-dropout", "0", "--batch-size", "4", "--no-progress"]


RETRIES: list[str] = []  # launches that needed their retry


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, method: str, out: Path, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "engines_on_cpu"), str(ROOT)]))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--main_process_port", str(_port()), "-m", "continual_lm", "run", "--method", method, *SETTINGS,
               *extra, "--output-dir", str(out)]
    for attempt in (1, 2):  # a 2-process gloo start-up crashed once in ~40 launches here; one retry, recorded
        done = subprocess.run(command + (["--overwrite"] if attempt > 1 else []), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if done.returncode == 0:
            RETRIES.extend([f"{config} {method}"] * (attempt - 1))
            return json.loads((out / "results.json").read_text())
    raise SystemExit(f"{config} {method} failed twice:\n{done.stdout[-3000:]}")


def max_diff(a: Path, b: Path) -> float:
    from continual_lm.train.checkpoint import RunDir

    worst = 0.0
    for phase in sorted((a / "checkpoints").glob("phase_*")):
        row = int(phase.name.split("_")[1])
        for x, y in zip(RunDir(a).load_checkpoint(row)[:2], RunDir(b).load_checkpoint(row)[:2]):
            worst = max([worst] + [(x[k].float() - y[k].float()).abs().max().item() for k in x])
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def compare(label: str, method: str, config: str, reference: str, *extra: str) -> None:
            ref_dir = tmp / f"{method}-ddp"
            if not (ref_dir / "results.json").exists():
                launch("ddp_cpu.yaml", method, ref_dir)
            out = tmp / f"{method}-{label}"
            result = launch(config, method, out, *extra)
            ref = json.loads((ref_dir / "results.json").read_text())
            rows.append({"check": label, "method": method, "engine": result["engine"], "against": reference,
                         "max_abs_diff": max_diff(out, ref_dir), "same_matrix": result["matrix"] == ref["matrix"]})
            print(rows[-1], flush=True)

        for method in args.methods:
            compare("zero2", method, "deepspeed_zero2.yaml", "ddp")
        compare("fsdp2", "moelora", "fsdp.yaml", "ddp")
        compare("zero3", "inclora+replay", "deepspeed_zero3.yaml", "ddp")
        compare("fsdp2 bf16", "inclora", "fsdp.yaml", "ddp float32", "--mixed-precision", "bf16")
        compare("zero3 bf16", "inclora", "deepspeed_zero3.yaml", "ddp float32", "--mixed-precision", "bf16")
        compare("zero2 bf16", "inclora", "deepspeed_zero2.yaml", "ddp float32", "--mixed-precision", "bf16",
                "--dtype", "bfloat16")
    atomic_write_json(HERE / "engines_equivalence.json", {"rows": rows, "retried_launches": RETRIES})
    lines = ["# Engines on 2 CPU processes: max |difference| of every phase's trained tensors and method state", "",
             "`python bench/engines_equivalence.py` · tiny-random-llama, 2 demo tasks, 2 optimizer steps per phase "
             "(linear schedule), batch 2 x 4 · the engine against DDP with the same settings", "",
             "| check | method | engine | against | max abs diff | same accuracy matrix |",
             "| --- | --- | --- | --- | ---: | --- |"]
    lines += [f"| {r['check']} | {r['method']} | {r['engine']} | {r['against']} | {r['max_abs_diff']:.2e} | "
              f"{'yes' if r['same_matrix'] else 'no'} |" for r in rows]
    lines += ["", "bf16 rows differ from float32 by design (Adam steps on bf16 gradients; ZeRO-2 with --dtype "
              "bfloat16 also initialises the model in bf16): they show that the path runs end to end.",
              "", f"Launches that crashed at start-up and passed on their one retry: {', '.join(RETRIES) or 'none'}."]
    atomic_write_text(HERE / "engines_equivalence.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
