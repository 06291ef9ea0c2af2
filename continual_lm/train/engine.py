"""How one training phase runs under accelerate's engines, and which methods each engine can train
(docs/scaling.md, "Engines").

Between phases the model is always a plain module with whole parameters on every process: the methods grow it
(new LoRAs, prompts, selectors), evaluation generates with it and the main process checkpoints it. Only the
training of a phase is wrapped:

* one process, DDP: trained in place; DDP wraps the model for the phase (``accelerator.prepare_model``).
* DeepSpeed ZeRO-1/2: trained in place inside a DeepSpeed engine built for the phase with its optimizer and data
  loader (optimizer states and gradients are partitioned, parameters stay whole). The engine clips
  gradients and steps the optimizer inside ``accelerator.backward``, so a method that edits gradients between
  backward and step, or the step's result (``after_backward``, ``after_optimizer_step``: MIGU), is refused.
  ``free_memory`` destroys the engine, which removes its gradient hooks from the parameters.
* DeepSpeed ZeRO-3, FSDP2: these partition the parameters themselves, and neither can be undone in place nor
  grow. The phase trains a copy of the model (``copy.deepcopy``) that the engine partitions; at the end every
  process gathers the copy's trained tensors (FSDP2 ``full_tensor``, ZeRO-3 ``GatheredParameters``) into the
  plain model and the copy is released. Memory per process: the whole model plus 1/N of the copy's parameters,
  gradients and optimizer states. Because the methods' own hooks see the plain model, only methods that train
  through the wrapped model's forward alone are accepted (no own ``forward``, ``extra_loss``, ``before_forward``,
  ``after_backward`` or ``after_optimizer_step``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ContinualLMError
from ..methods.base import Method, overrides
from ..models.backbone import parse_dtype


@dataclass
class PhaseTraining:
    """What the loop trains with during one phase."""

    model: nn.Module  # the module the training forward runs through (a DDP/DeepSpeed wrapper, or the model)
    optimizer: Any
    loader: Any
    params: list[nn.Parameter]  # the parameters being trained (what gradient clipping sees)
    steps_in_backward: bool  # DeepSpeed: clipping and the optimizer step happen in accelerator.backward
    copy: nn.Module | None = None  # ZeRO-3/FSDP2: the partitioned copy being trained (gathered back at the end)


def cpu_processes() -> bool:
    """Launched as several processes (accelerate launch / torchrun) on a machine without an accelerator."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def engine_name(accelerator) -> str:
    """"single", "ddp", "deepspeed-zero<stage>" or "fsdp" (for results.json and error messages)."""
    kind = accelerator.distributed_type.name
    if kind == "NO":
        return "single"
    if kind == "DEEPSPEED":
        return f"deepspeed-zero{deepspeed_config(accelerator).get('zero_optimization', {}).get('stage', 0)}"
    if kind == "FSDP":
        return "fsdp"
    return "ddp"


def device_name(device: torch.device) -> str:
    """What the run trained on, for results.json: the accelerator's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def deepspeed_config(accelerator) -> dict:
    return accelerator.state.deepspeed_plugin.deepspeed_config


def _parts(method: Method) -> list[Method]:
    return list(getattr(method, "parts", [method]))


def edits_gradients(method: Method) -> list[str]:
    """Names of the method's parts that change gradients between backward and the optimizer step."""
    return [p.name for p in _parts(method) if overrides(type(p), "after_backward")]


def edits_after_steps(method: Method) -> list[str]:
    """Names of the method's parts that change parameters after the optimizer step (``after_optimizer_step``)."""
    return [p.name for p in _parts(method) if overrides(type(p), "after_optimizer_step")]


def shards_parameters(accelerator) -> bool:
    name = engine_name(accelerator)
    return name == "fsdp" or name == "deepspeed-zero3"


def hooks_outside_forward(method: Method) -> list[str]:
    """``part.hook`` for each training hook a part of the method defines besides the model's own forward."""
    hooks = ("forward", "extra_loss", "before_forward", "after_backward", "after_optimizer_step")
    return [f"{p.name}.{h}" for p in _parts(method) for h in hooks if overrides(type(p), h)]


def check_engine(accelerator, method: Method, config) -> None:
    """Refuse, before any work, an engine/method/option combination the loop cannot train correctly."""
    name = engine_name(accelerator)
    if name == "fsdp" and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ContinualLMError("FSDP: the loop supports FSDP2 only; set fsdp_version: 2 in the accelerate config "
                               "(`continual-lm accelerate-config fsdp` writes one)")
    if name == "deepspeed-zero3" and accelerator.state.deepspeed_plugin.zero3_init_flag:
        raise ContinualLMError("DeepSpeed ZeRO-3: set zero3_init_flag: false in the accelerate config; the loop keeps "
                               "a whole copy of the model between phases and partitions a copy per phase")
    if shards_parameters(accelerator):
        outside = hooks_outside_forward(method)
        if outside:
            raise ContinualLMError(
                f"{name} partitions the parameters, and method {method.name} trains through its own hooks "
                f"({', '.join(outside)}), which would see unpartitioned copies; run it with DeepSpeed ZeRO-2 "
                f"(`continual-lm accelerate-config deepspeed_zero2`), DDP or one process (docs/scaling.md, Engines)")
    if name.startswith("deepspeed"):
        editors = edits_gradients(method)
        if editors:
            raise ContinualLMError(
                f"method {', '.join(editors)} edits gradients between backward and the optimizer step, which DeepSpeed "
                f"does inside one call; run it with DDP (`continual-lm accelerate-config ddp_cpu`) or one process")
        editors = edits_after_steps(method)
        if editors:
            raise ContinualLMError(
                f"method {', '.join(editors)} edits parameters after each optimizer step, which DeepSpeed would "
                f"overwrite from its own partitioned copy; run it with DDP (`continual-lm accelerate-config ddp_cpu`) or one "
                f"process")
        _agree_with_deepspeed(accelerator, config)


def _agree_with_deepspeed(accelerator, config) -> None:
    """Fill the DeepSpeed config's "auto" batch/clipping/accumulation values from the run's options, and refuse
    explicit values that disagree with them (DeepSpeed would silently use its own)."""
    ds = deepspeed_config(accelerator)
    wanted = {"train_micro_batch_size_per_gpu": config.batch_size, "gradient_accumulation_steps": config.grad_accum,
              "gradient_clipping": float(config.max_grad_norm or 0.0)}
    options = {"train_micro_batch_size_per_gpu": "--batch-size", "gradient_accumulation_steps": "--grad-accum",
               "gradient_clipping": "--max-grad-norm"}
    for key, value in wanted.items():
        given = ds.get(key, "auto")
        if given == "auto":
            ds[key] = value
        elif float(given) != float(value):
            raise ContinualLMError(f"the DeepSpeed config sets {key} = {given} but {options[key]} is {value}; make "
                                   f"them agree or set {key} to auto in the DeepSpeed config")
    ds["train_batch_size"] = config.batch_size * config.grad_accum * accelerator.num_processes
    half = next((k for k in ("bf16", "fp16") if ds.get(k, {}).get("enabled") is True), None)
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    wanted_dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(half)
    if half and stage < 3 and parse_dtype(config.dtype) != parse_dtype(wanted_dtype):
        raise ContinualLMError(
            f"DeepSpeed ZeRO-{stage} with {half} casts the model to {wanted_dtype} in place (it keeps float32 master "
            f"weights in its optimizer); load the model so with --dtype {wanted_dtype}, or a resumed run would "
            f"evaluate different weights than an uninterrupted one")


def start_training(accelerator, model: nn.Module, loader, make_optimizer: Callable[[list], Any]) -> PhaseTraining:
    """Wrap ``model`` (or, when the engine partitions parameters, a copy of it), the optimizer that
    ``make_optimizer(params)`` builds over its trainable parameters, and the data loader for one phase."""
    kind = accelerator.distributed_type.name
    work = copy.deepcopy(model) if shards_parameters(accelerator) else model
    optimizer = make_optimizer([p for p in work.parameters() if p.requires_grad])
    if kind in ("DEEPSPEED", "FSDP"):  # one engine per phase, built from the model (or its copy) and the optimizer
        wrapped, optimizer, loader = accelerator.prepare(work, optimizer, loader)
    else:
        wrapped = accelerator.prepare_model(model) if kind != "NO" else model
        optimizer, loader = accelerator.prepare(optimizer, loader)
    # FSDP2 shards the copy in place and gives the optimizer the shards: read the trained parameters after prepare
    params = [p for p in wrapped.parameters() if p.requires_grad]
    return PhaseTraining(wrapped, optimizer, loader, params, steps_in_backward=kind == "DEEPSPEED",
                         copy=work if work is not model else None)


def end_training(accelerator, model: nn.Module, training: PhaseTraining) -> None:
    """Gather a partitioned copy's trained tensors into ``model`` (every process), then release the phase's
    wrapper, optimizer and loader (a DeepSpeed engine is destroyed): the model is plain again."""
    if training.copy is not None:
        trained = _gathered_trainable(accelerator, training.copy)
        targets = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in trained.items():
                targets[name].copy_(value.to(targets[name].dtype))
        del trained
    if accelerator.distributed_type.name == "DEEPSPEED":
        _release_deepspeed_engine(training.model)
    accelerator.free_memory()
    training.model = training.optimizer = training.loader = training.copy = None


def _release_deepspeed_engine(engine) -> None:
    """What ``engine.destroy()`` (called by ``free_memory``) leaves behind (DeepSpeed 0.19): its forward hooks on
    the module, which would run in every later forward of the model and keep the engine with its optimizer states
    alive; and, under ZeRO-3, the module in a module-level stack and in an unbounded ``lru_cache`` of the parameter
    coordinator. Without this every phase would leave an engine behind (tests/test_engines.py counts them)."""
    for name in ("module_forward_pre_hook", "module_forward_post_hook"):
        hook = getattr(engine, name, None)
        if hook is not None:
            hook.remove()
            setattr(engine, name, None)
    from deepspeed.runtime.zero import parameter_offload
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack[:] = [m for m in stack if m is not engine.module]
    cached = getattr(PartitionedParameterCoordinator, "_PartitionedParameterCoordinator__params_to_release", None)
    for cell in getattr(cached, "__closure__", None) or ():  # the lru_cache inside DeepSpeed's nvtx wrapper
        getattr(cell.cell_contents, "cache_clear", lambda: None)()


def _gathered_trainable(accelerator, work: nn.Module) -> dict[str, torch.Tensor]:
    """Whole copies of the trainable parameters of a partitioned model, on every process (a collective)."""
    params = [(n, p) for n, p in work.named_parameters() if p.requires_grad]
    if accelerator.distributed_type.name == "FSDP":
        return {n: p.full_tensor().detach().clone() for n, p in params}
    import deepspeed

    with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
        return {n: p.detach().clone() for n, p in params}
