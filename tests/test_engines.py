"""DeepSpeed ZeRO-2/3 and FSDP2 through the shipped accelerate configs, on 2 CPU processes (gloo), against one
process with the same global batch; and the refusals of engine/method combinations the loop cannot train.

accelerate never selects DeepSpeed or FSDP on a CPU, so the launches put tests/engines_on_cpu/sitecustomize.py on
the processes' PYTHONPATH: it switches accelerate's gloo process group to the configured engine, the way accelerate
does on GPUs. The engines themselves are the real ones (DeepSpeed's CPU accelerator, torch FSDP2). Tolerance and
settings as in test_distributed.py (float32 summation order only).
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from continual_lm.config import RunConfig
from continual_lm.errors import ContinualLMError
from continual_lm.methods.base import build_method
from continual_lm.train.engine import check_engine

from test_distributed import ROOT, WEIGHT_ATOL, _cli_args, _env, _free_port, _reference, _same_weights

pytest.importorskip("deepspeed", reason="the DeepSpeed engine tests need deepspeed (pip install -e '.[test]')")

FULL_FINETUNING_ATOL = 2e-4
CPU_ENGINES = ROOT / "tests" / "engines_on_cpu"
# engine -> (shipped accelerate config, methods run under it)
ENGINES = {
    "deepspeed-zero2": ("deepspeed_zero2.yaml", ["inclora", "amlora+ewc"]),
    "deepspeed-zero3": ("deepspeed_zero3.yaml", ["inclora", "seqft"]),
    "fsdp": ("fsdp.yaml", ["inclora", "seqft"]),
}


# after the runs: what is still alive of the phases' engines (each phase builds and must release one)
LIVE_ENGINES = """
import gc, json, torch
from deepspeed import DeepSpeedEngine
from torch.distributed.fsdp import FSDPModule
gc.collect()
live = {{"deepspeed": sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects()),
        "fsdp": sum(isinstance(o, FSDPModule) for o in gc.get_objects())}}
if torch.distributed.get_rank() == 0:
    json.dump(live, open({out!r}, "w"))
"""


def _launch(config: str, driver: Path, cwd: Path) -> subprocess.Popen:
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(CPU_ENGINES), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "continual_lm" / "accelerate_configs" / config),
               "--main_process_port", str(_free_port()), str(driver)]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    """One launch per engine (its methods run one after another in the same processes), while the 1-process
    references train in this process."""
    tmp = tmp_path_factory.mktemp("engines")
    outputs, logs = {}, {}
    methods = sorted({m for _, ms in ENGINES.values() for m in ms})
    references = {}
    for engine, (config, engine_methods) in ENGINES.items():
        outputs[engine] = {m: tmp / engine / m.replace("+", "_") for m in engine_methods}
        runs = [_cli_args(m, out, batch_size=4)[2:] for m, out in outputs[engine].items()]
        driver = tmp / f"{engine}.py"
        driver.write_text(f"from continual_lm.cli import main\nfor argv in {runs!r}:\n    assert main(argv) == 0\n"
                          + LIVE_ENGINES.format(out=str(tmp / f"{engine}_live.json")))
        process = _launch(config, driver, tmp)
        for m in methods:  # overlap the references with the first launch
            if m not in references:
                references[m] = _reference(tmp / f"ref_{m.replace('+', '_')}", m, batch_size=8)
        logs[engine], _ = process.communicate(timeout=600)
        (tmp / f"{engine}.log").write_text(logs[engine])
        assert process.returncode == 0, f"{engine}:\n{logs[engine][-4000:]}"
    return outputs, references, tmp


@pytest.mark.parametrize("engine,method", [(e, m) for e, (_, ms) in ENGINES.items() for m in ms])
def test_engine_on_two_processes_matches_one_process(engine_runs, engine, method):
    outputs, references, tmp = engine_runs
    out, reference = outputs[engine][method], references[method]
    results = json.loads((out / "results.json").read_text())
    assert results["engine"] == engine and reference["engine"] == "single"
    assert results["batch"] == {"per_process": 4, "processes": 2, "grad_accum": 1, "global": 8}
    ref_dir = tmp / f"ref_{method.replace('+', '_')}" / "run"
    # trained tensors and method state (EWC Fisher, ...) of every phase. Full fine-tuning moves every weight, and
    # Adam turns float32 summation noise on weights with near-zero gradients into larger steps: measured 6.1e-5
    # (FSDP2) and 3.4e-5 (ZeRO-3) after 2 phases, on 2-3 of 107,328 weights above 1e-5; a wrong schedule or a
    # missed gradient reduction moves weights by about lr (5e-3)
    _same_weights(out, ref_dir, phases=2, atol=FULL_FINETUNING_ATOL if method == "seqft" else WEIGHT_ATOL)
    for row in range(2):
        name = f"predictions/after_phase_{row:02d}.json"
        assert json.loads((out / name).read_text()) == json.loads((ref_dir / name).read_text())
    assert results["matrix"] == reference["matrix"]
    assert not list(out.rglob("*.tmp*"))


@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_phase_releases_its_engine(engine_runs, engine):
    """No DeepSpeed engine or FSDP-sharded copy outlives its phase (DeepSpeed's destroy() alone leaves the engine
    reachable through hooks and caches: train/engine.py releases them)."""
    tmp = engine_runs[2]
    assert json.loads((tmp / f"{engine}_live.json").read_text()) == {"deepspeed": 0, "fsdp": 0}


# ---- refusals: checked before any work, from the engine and the method's hooks -------------------------------
def _accelerator(kind: str, *, stage: int = 2, fsdp_version: int = 2, zero3_init_flag: bool = False, ds=None):
    plugin = SimpleNamespace(deepspeed_config=ds if ds is not None else {"zero_optimization": {"stage": stage}},
                             zero3_init_flag=zero3_init_flag)
    return SimpleNamespace(distributed_type=SimpleNamespace(name=kind), num_processes=2, gradient_accumulation_steps=1,
                           state=SimpleNamespace(deepspeed_plugin=plugin,
                                                 fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version)))


def _check(accelerator, method: str, **options):
    config = RunConfig(method=method, **options)
    check_engine(accelerator, build_method(config), config)


@pytest.mark.parametrize("kind,stage", [("FSDP", 0), ("DEEPSPEED", 3)])
def test_partitioned_parameters_refuse_methods_with_their_own_training_hooks(kind, stage):
    for method, hook in [("amlora", "amlora.extra_loss"), ("seqlora+ewc", "ewc.extra_loss"), ("l2p", "l2p.forward"),
                         ("inclora+migu", "migu.before_forward")]:
        with pytest.raises(ContinualLMError, match=f"partitions the parameters.*{hook}.*ZeRO-2"):
            _check(_accelerator(kind, stage=stage), method)
    for method in ("seqft", "seqlora", "inclora", "inclora+replay", "moelora", "mtl", "single"):
        _check(_accelerator(kind, stage=stage), method)  # accepted


def test_deepspeed_refuses_gradient_editing_and_disagreeing_settings():
    with pytest.raises(ContinualLMError, match="migu edits gradients.*DDP"):
        _check(_accelerator("DEEPSPEED", stage=2), "inclora+migu")
    _check(_accelerator("DEEPSPEED", stage=2), "amlora+ewc")  # extra losses are fine with whole parameters
    ds = {"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5}
    with pytest.raises(ContinualLMError, match="gradient_clipping = 0.5 but --max-grad-norm is 1.0"):
        _check(_accelerator("DEEPSPEED", ds=ds), "inclora")
    ds = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}
    accelerator = _accelerator("DEEPSPEED", ds=ds)
    _check(accelerator, "inclora", batch_size=4, grad_accum=2, max_grad_norm=0.0)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_clipping"] == 0.0
    assert ds["gradient_accumulation_steps"] == 2 and ds["train_batch_size"] == 16  # 4 x 2 accumulation x 2 processes


def test_deepspeed_half_precision_needs_the_model_loaded_in_that_dtype():
    """ZeRO-1/2 casts the (shared) model in place; ZeRO-3 casts only the phase's copy."""
    for stage, ok in ((2, False), (3, True)):
        ds = {"zero_optimization": {"stage": stage}, "bf16": {"enabled": True}}
        if ok:
            _check(_accelerator("DEEPSPEED", ds=ds), "inclora")
        else:
            with pytest.raises(ContinualLMError, match="ZeRO-2 with bf16 casts the model to bfloat16.*--dtype bfloat16"):
                _check(_accelerator("DEEPSPEED", ds=ds), "inclora")
    _check(_accelerator("DEEPSPEED", ds={"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}), "inclora",
           dtype="bfloat16")


def test_fsdp1_and_zero3_init_are_refused():
    with pytest.raises(ContinualLMError, match="FSDP2 only; set fsdp_version: 2"):
        _check(_accelerator("FSDP", fsdp_version=1), "inclora")
    with pytest.raises(ContinualLMError, match="zero3_init_flag: false"):
        _check(_accelerator("DEEPSPEED", stage=3, zero3_init_flag=True), "inclora")


def test_a_run_trained_under_deepspeed_resumes_on_one_process(engine_runs, tmp_path):
    """Checkpoints hold the plain model's tensors and the method state, whichever engine trained them: phase 0 of the
    2-process ZeRO-2 amlora+ewc run, resumed by one process that trains phase 1, ends like the 1-process run."""
    import shutil

    from continual_lm import run

    outputs, references, tmp = engine_runs
    resumed = tmp_path / "resumed"
    shutil.copytree(outputs["deepspeed-zero2"]["amlora+ewc"], resumed)
    state = json.loads((resumed / "state.json").read_text())
    del state["phases"]["1"]
    (resumed / "state.json").write_text(json.dumps(state))
    shutil.rmtree(resumed / "checkpoints" / "phase_01")
    for name in ("results.json", "predictions/after_phase_01.json"):
        (resumed / name).unlink()
    config = RunConfig.from_yaml(resumed / "config.yaml")
    config.batch_size = 8  # the same global batch (2 x 4 before)
    (resumed / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    results = run(config, output_dir=resumed, resume=True)  # allowed: the global batch stays the recorded one
    assert results["engine"] == "single" and results["batch"]["processes"] == 1
    _same_weights(resumed, tmp / "ref_amlora_ewc" / "run", phases=2)
    assert results["matrix"] == references["amlora+ewc"]["matrix"]
