"""Multi-process training through accelerate: 2 CPU processes (gloo) against 1 process with the same global batch.

Tolerance. Both runs see the same examples in the same global batches (accelerate shards each global batch of 8 as
2 x 4; the shuffling generator is seeded per phase) and the same LoRA initialisation, with LoRA dropout 0 and
targets truncated to the same token count (every answer is longer than --max-target-length), so the mean loss over a
global batch is the same function in both runs. The only difference is float32 summation order (gloo all-reduce of
two half-batch gradients vs one batch), so the trained weights must agree to `WEIGHT_ATOL` (measured: max |diff|
1.0e-6 for amlora+ewc, under 1e-7 for inclora and l2p, for weights of magnitude 0.1-0.2 after 2 phases of 2 steps). Greedy decoding could flip a token only if two logits were
within that noise; it did not happen here, so predictions and the accuracy matrix are compared exactly.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from continual_lm import run

from helpers import checkpoint_method_tensors, checkpoint_tensors, tiny_config

ROOT = Path(__file__).resolve().parent.parent
DDP_CONFIG = ROOT / "continual_lm" / "accelerate_configs" / "ddp_cpu.yaml"
WEIGHT_ATOL = 2e-5
# LoRA; LoRA with extra method state (AM-LoRA selectors, EWC Fisher); soft prompts fed to the DDP-wrapped model as
# input embeddings (the prompt methods read the embedding table of the model inside the wrapper)
DDP_METHODS = ["inclora", "amlora+ewc", "l2p"]
GROUPED = {"inclora"}  # trained with --group-by-length (the others with the default plain shuffled batches)
# 2 optimizer steps per phase under a linear schedule (lr, then lr / 2: a schedule stepped too often or not at all
# changes the weights); 3 test inputs one at a time, so the processes make different numbers of generate calls
SETTINGS = dict(tasks=["sentiment", "number_sign"], max_train_per_task=16, max_test_per_task=3, max_target_length=4,
                eval_batch_size=1, lr=5e-3, scheduler="linear")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _launch(args: list[str], cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
               "--main_process_port", str(_free_port()), *args]
    return subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cli_args(method: str, out: Path, batch_size: int) -> list[str]:
    return ["-m", "continual_lm", "run", "--benchmark", "demo", "--method", method, "--model", "tiny-random-llama",
            "--seed", "3", "--tasks", *SETTINGS["tasks"], "--max-train-per-task", "16", "--max-test-per-task", "3",
            "--max-target-length", "4", "--max-input-length", "64", "--eval-batch-size", "1", "--lr", "5e-3",
            "--scheduler", "linear",
            "--lora-dropout", "0", "--batch-size", str(batch_size), "--no-progress", "--output-dir", str(out)] + (
        ["--group-by-length"] if method in GROUPED else [])


def _reference(tmp_path: Path, method: str, **overrides):
    config = tiny_config(tmp_path, method=method, **{**SETTINGS, "group_by_length": method in GROUPED, **overrides})
    config.lora.dropout = 0.0
    return run(config)


def _max_weight_diff(wa: dict, wb: dict) -> float:
    assert set(wa) == set(wb)
    return max([(wa[k] - wb[k]).abs().max().item() for k in wa] or [0.0])


def _same_weights(a: Path, b: Path, phases: int, atol: float = WEIGHT_ATOL) -> None:
    for row in range(phases):
        for name, read in (("trainable", checkpoint_tensors), ("method state", checkpoint_method_tensors)):
            diff = _max_weight_diff(read(a, row), read(b, row))
            assert diff <= atol, f"phase {row} {name}: max |diff| {diff}"


GATHER_CHECK = '''
import json
import torch
from accelerate import Accelerator
from continual_lm.data.collate import Collator
from continual_lm.data.tasks import Task
from continual_lm.eval.generate import predict_requests
from continual_lm.models.backbone import build_byte_tokenizer

class Echo:  # "generates" its prompt back, so every prediction names its input
    uses_task_id_at_test = False
    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        return batch["input_ids"]

accelerator = Accelerator(cpu=True)
collator = Collator(build_byte_tokenizer(with_bos=False), True, 64, 8, False)
task = Task(name="t", kind="generation", metric="rougeL", instruction="", train=[], test=[])
inputs = [f"item{i} " + "x" * (7 - i) for i in range(7)]  # uneven: 4 on rank 0, 3 on rank 1; varied lengths
preds = predict_requests(torch.nn.Linear(1, 1), Echo(), collator, [(task, 0, text) for text in inputs], 2, accelerator,
                        progress=False)
with open(f"gathered_{accelerator.process_index}.json", "w") as f:  # one file per rank: a shared stdout interleaves
    json.dump({"world": accelerator.num_processes, "preds": preds}, f)
'''


# MIGU under DDP: every process must mask, and write back, the same rows (its statistics are summed over processes);
# DDP averages gradients but never re-syncs parameters, so a process that masked other rows would hold other
# weights. Each rank saves its own LoRA weights after a 2-phase run. (MIGU is not compared with a 1-process run:
# after a LoRA's first AdamW step B's entries are all +-lr, its rows' |x_B| nearly tie, and float summation order
# alone reorders them.)
MIGU_RANKS_CHECK = '''
from safetensors.torch import save_file
from continual_lm.config import LoRAConfig, RunConfig
from continual_lm.train.assemble import prepare_run

config = RunConfig(benchmark="demo", method="inclora+migu", model="tiny-random-llama", seed=3,
                   tasks=["sentiment", "number_sign"], max_train_per_task=16, max_test_per_task=2,
                   max_input_length=64, max_target_length=4, batch_size=4, eval_batch_size=2, lr=5e-3,
                   lora=LoRAConfig(dropout=0.0), progress=False)
prepared = prepare_run(config, output_dir="migu_ranks")
prepared.start()
runner = prepared.runner
save_file({n: p.detach().contiguous() for n, p in runner.model.named_parameters() if "lora_" in n},
          f"migu_rank{runner.accelerator.process_index}.safetensors")
'''


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One `accelerate launch` of 2 processes (process start-up dominates the cost on CPU): the sharded-evaluation
    check, then `continual-lm run` (the same entry as `python -m continual_lm run`) for each of DDP_METHODS. It runs
    in the background while the 1-process references train in this process."""
    tmp = tmp_path_factory.mktemp("ddp")
    outputs = {m: tmp / m.replace("+", "_") for m in DDP_METHODS}
    runs = [_cli_args(m, out, batch_size=4)[2:] for m, out in outputs.items()]  # without "-m continual_lm"
    driver = (GATHER_CHECK + MIGU_RANKS_CHECK
              + f"\nfrom continual_lm.cli import main\nfor argv in {runs!r}:\n    assert main(argv) == 0\n")
    (tmp / "driver.py").write_text(driver)
    process = _launch([str(tmp / "driver.py")], tmp)
    references = {m: _reference(tmp / f"ref_{m.replace('+', '_')}", m, batch_size=8) for m in outputs}
    log, _ = process.communicate(timeout=400)
    (tmp / "launch.log").write_text(log)
    assert process.returncode == 0, log[-4000:]
    return outputs, references, tmp, log


@pytest.mark.parametrize("method", DDP_METHODS)
def test_two_processes_match_one_process_with_the_same_global_batch(two_process_runs, method):
    outputs, references, tmp, _ = two_process_runs
    out, reference = outputs[method], references[method]
    results = json.loads((out / "results.json").read_text())
    assert results["batch"] == {"per_process": 4, "processes": 2, "grad_accum": 1, "global": 8}
    assert reference["batch"] == {"per_process": 8, "processes": 1, "grad_accum": 1, "global": 8}
    ref_dir = tmp / f"ref_{method.replace('+', '_')}" / "run"
    _same_weights(out, ref_dir, phases=2)
    for row in range(2):
        name = f"predictions/after_phase_{row:02d}.json"
        assert json.loads((out / name).read_text()) == json.loads((ref_dir / name).read_text())
    assert results["matrix"] == reference["matrix"]
    assert results["metrics"] == reference["metrics"]
    assert not list(out.rglob("*.tmp*"))  # one writer: no leftovers of a second process racing the first


def test_sharded_evaluation_is_gathered_in_input_order(two_process_runs):
    tmp = two_process_runs[2]
    for rank in (0, 1):  # every rank holds all predictions, in input order
        gathered = json.loads((tmp / f"gathered_{rank}.json").read_text())
        assert gathered["world"] == 2
        assert [p.split()[0] for p in gathered["preds"]] == [f"item{i}" for i in range(7)]


def test_migu_masks_and_writes_back_the_same_rows_on_every_process(two_process_runs):
    tmp = two_process_runs[2]
    ranks = [load_file(tmp / f"migu_rank{rank}.safetensors") for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and any(".lora_B.1" in k for k in ranks[0])
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert all(ranks[0][k].abs().sum() > 0 for k in ranks[0] if ".lora_B." in k)  # both LoRAs trained


def _final_weights(out: Path, phases: int) -> dict[str, torch.Tensor]:
    return checkpoint_tensors(out / "run", phases - 1)


def test_gradient_accumulation_matches_the_larger_batch_and_checkpointing_runs(tmp_path):
    """--grad-accum 2 --batch-size 4 == --batch-size 8 (equal token counts per example, so the mean of two
    half-batch means is the batch mean); gradient checkpointing recomputes the same forward, so its weights match."""
    big = _reference(tmp_path / "big", "inclora", batch_size=8)
    accumulated = _reference(tmp_path / "accum", "inclora", batch_size=4, grad_accum=2)
    checkpointed = _reference(tmp_path / "ckpt", "inclora", batch_size=8, gradient_checkpointing=True)
    assert accumulated["batch"]["global"] == 8 and accumulated["batch"]["grad_accum"] == 2
    a = _final_weights(tmp_path / "big", 2)
    for other in ("accum", "ckpt"):
        b = _final_weights(tmp_path / other, 2)
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff <= WEIGHT_ATOL, f"{other}: max |diff| {diff}"
    # and accumulation really changed the schedule: one optimiser step of 8, not two of 4
    unaccumulated = _reference(tmp_path / "small", "inclora", batch_size=4)
    b = _final_weights(tmp_path / "small", 2)
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 100 * WEIGHT_ATOL
    assert big["matrix"] == checkpointed["matrix"] and unaccumulated["batch"]["global"] == 4
