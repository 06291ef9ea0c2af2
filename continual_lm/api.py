"""The Python API: run an experiment, and use what a run learned (load its final model, predict without task
ids, export adapters, merge weights). docs/api.md has the guide.

    results = continual_lm.run(method="inclora", benchmark="demo", epochs=2, output_dir="runs/demo-inclora")
    results = continual_lm.run(config, stream=my_stream, callbacks=[MyCallback()])    # a RunConfig, a Python stream

    run = continual_lm.load_run("runs/std1-inclora")
    run.predict(["What is the topic ...\\nAnswer:"])                    # full prompts, as-is
    run.predict([{"input": "Title: ...", "task": "dbpedia"}])            # formatted with that task's template
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .data.tasks import GENERATION, ROUGE_L, Task
from .data.stream import stream_definition
from .errors import ContinualLMError
from .io_utils import atomic_write_json, atomic_write_text, atomic_write_yaml
from .models.inject import find_lora_banks
from .train.checkpoint import RunDir


def run(config=None, *, stream=None, callbacks=(), output_dir: str | Path | None = None, resume: bool = False,
        overwrite: bool = False, reuse: bool = False, backbone=None, **options) -> dict[str, Any]:
    """Run a continual-learning experiment and return its results (the content of results.json).

    ``config``: a ``RunConfig``, a mapping of options, a YAML file's path, or None; ``options``: the same options as
    keywords (``method="inclora", epochs=2, lora={"r": 4}, method_options={...}``: every command-line option of
    ``continual-lm run``, by its RunConfig name), applied over ``config``. ``stream``: a ``Stream`` built in Python
    (data/stream.py) instead of a benchmark; ``callbacks``: ``Callback`` objects called after the shipped ones.
    ``resume``/``overwrite``/``reuse`` act on ``output_dir`` as ``--resume``/``--overwrite`` do (a resumed run
    whose stream was given in Python needs the same stream again). Everything is checked before anything is
    written (docs/reliability.md)."""
    from .config import RunConfig, read_yaml_mapping
    from .train.assemble import run as assembled_run

    if isinstance(config, (str, Path)):
        base, source = read_yaml_mapping(config), str(config)
    elif isinstance(config, RunConfig):
        base, source = None, "configuration"
    elif config is None or isinstance(config, dict):
        base, source = dict(config or {}), "configuration"
    else:
        raise ContinualLMError(f"config: expected a RunConfig, a mapping of options or a YAML file's path, got "
                               f"{type(config).__name__}")
    if base is None:
        if options:  # over a RunConfig: what it was given, and these options, count as given (for --preset)
            given = config.given
            config = RunConfig.from_dict({**config.to_dict(), **options})
            config.given = None if given is None else given | RunConfig.from_dict(options).given
    elif base or options or not resume:
        config = RunConfig.from_dict({**base, **options}, source=source)
    else:
        config = None  # resume with the recorded configuration
    return assembled_run(config, output_dir=output_dir, resume=resume, overwrite=overwrite, reuse=reuse,
                         backbone=backbone, stream=stream, callbacks=list(callbacks))


@dataclass
class LoadedRun:
    path: Path
    runner: Any  # train.loop.ContinualRunner with the final model restored

    @property
    def model(self):
        return self.runner.model

    @property
    def tokenizer(self):
        return self.runner.backbone.tokenizer

    @property
    def method(self):
        return self.runner.method

    @property
    def config(self):
        return self.runner.config

    @property
    def tasks(self) -> list[Task]:
        return self.runner.tasks

    def _raw_task(self) -> Task:
        return Task(name="prompt", kind=GENERATION, metric=ROUGE_L, instruction="", train=[], test=[],
                    template="{input}")

    def predict(self, inputs: list[str | dict], batch_size: int | None = None, progress: bool = False) -> list[str]:
        """Greedy predictions through exactly the evaluation path. A string or {"prompt": ...} is used as the full
        prompt; {"input": ..., "task": NAME} is formatted with that task's instruction/template (formatting only:
        the task id reaches the method only if it declares uses_task_id_at_test, as in evaluation)."""
        from .eval.generate import predict_requests

        if self.runner.backbone.is_encoder_only:
            raise ContinualLMError(f"{self.path}: model {self.config.model!r} is encoder-only (a masked LM trained by "
                                   f"continual pre-training); it cannot generate predictions")
        by_name = {t.name: k for k, t in enumerate(self.tasks)}
        raw = self._raw_task()
        requests = []
        for position, item in enumerate(inputs):
            if isinstance(item, str):
                item = {"prompt": item}
            if not isinstance(item, dict) or not ({"prompt", "input"} & set(item)):
                raise ContinualLMError(f"input {position}: expected a string, {{'prompt': ...}} or "
                                       f"{{'input': ..., 'task': ...}}, got {item!r:.80}")
            for key in ("prompt", "input", "task"):
                if key in item and not isinstance(item[key], str):
                    raise ContinualLMError(f"input {position}: '{key}' must be a string, got {item[key]!r:.80}")
            if "prompt" in item:
                if self.method.uses_task_id_at_test:
                    raise ContinualLMError(f"method {self.config.method} needs a task id at test time; give inputs "
                                           f"as {{'input': ..., 'task': ...}}")
                requests.append((raw, -1, item["prompt"]))
                continue
            name = item.get("task")
            if name is None:
                raise ContinualLMError(f"input {position}: an 'input' needs a 'task' (whose template formats it); "
                                       f"pass a full 'prompt' instead to stay task-agnostic")
            if name not in by_name:
                raise ContinualLMError(f"input {position}: unknown task {name!r}; this run's tasks: "
                                       f"{', '.join(by_name)}")
            requests.append((self.tasks[by_name[name]], by_name[name], item["input"]))
        return predict_requests(self.model, self.method, self.runner.collator, requests,
                                batch_size or self.config.eval_batch_size, None, progress, desc="predict")


def load_run(run_dir: str | Path, *, trust_remote_code: bool = False, allow_unfinished: bool = False) -> LoadedRun:
    """The final model of a run directory, ready to predict, export or merge; or of an export folder in
    continual_lm's own format (``continual-lm export`` of amlora, sapt, moelora, ...), ready to predict. The model's
    own code runs only with ``trust_remote_code``; a run that has not finished (no results.json) is refused unless
    ``allow_unfinished`` (then its model after the last trained phase is used)."""
    from .train.assemble import load_final_runner

    if (Path(run_dir) / EXPORT_JSON).is_file():
        return _load_export(Path(run_dir), trust_remote_code=trust_remote_code)
    run_dir = RunDir(run_dir)
    if not run_dir.results_path.exists() and not allow_unfinished:
        trained = sum(bool(p.get("trained")) for p in run_dir.read_state()["phases"].values())
        raise ContinualLMError(f"{run_dir.path} is an unfinished run ({trained} phase(s) trained, no results.json); "
                               f"finish it with `continual-lm run --resume {run_dir.path}`, or pass "
                               f"--allow-unfinished (allow_unfinished=True) to use its model after the last trained "
                               f"phase")
    return LoadedRun(run_dir.path, load_final_runner(run_dir.path, trust_remote_code=trust_remote_code))


# ---- export ------------------------------------------------------------------------------------------------------
EXPORT_JSON = "export.json"
OWN_FORMAT = "banks.safetensors"  # every trained parameter (LoRA banks, selectors, routers) of an own-format export
STREAM_JSON = "stream.json"  # the tasks' definitions (no examples): what predict needs to format and decode


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ContinualLMError(f"{path} cannot be read ({err}); the export folder is incomplete") from None


def _load_export(path: Path, *, trust_remote_code: bool) -> LoadedRun:
    """The model of an own-format export folder: the method's structure rebuilt through the exported phases from
    config.yaml and stream.json, then every trained parameter loaded from banks.safetensors."""
    import dataclasses

    from safetensors.torch import load_file

    from .config import RunConfig
    from .data.stream import stream_from_definition
    from .train.assemble import build_runner

    summary = _read_json(path / EXPORT_JSON)
    if not isinstance(summary, dict) or summary.get("own_format") != OWN_FORMAT:
        combined = f" load {path / 'combined'} with peft.PeftModel.from_pretrained;" if isinstance(summary, dict) \
            and summary.get("combined") else ""
        raise ContinualLMError(f"{path} is an export of peft adapters, not in continual_lm's own format:{combined} "
                               f"see its README.md")
    for name in ("config.yaml", STREAM_JSON, OWN_FORMAT):
        if not (path / name).is_file():
            raise ContinualLMError(f"{path}: {name} is missing; the export folder is incomplete")
    config = RunConfig.from_yaml(path / "config.yaml")
    if config.trust_remote_code and not trust_remote_code:
        raise ContinualLMError(f"{path} was trained with --trust-remote-code: its model ({config.model}) runs its own "
                               f"code. Pass --trust-remote-code to load it, only if you trust that code")
    # the tasks come from stream.json, not from the options that selected them from the data
    config = dataclasses.replace(config, trust_remote_code=trust_remote_code, progress=False, tasks=None,
                                 stream_file=None, unseen_tasks=None)
    stream = stream_from_definition(_read_json(path / STREAM_JSON), str(path / STREAM_JSON))
    runner = build_runner(config, path, stream=stream, for_training=False)
    runner.restore_phases(list(summary["trained_phases"]), load_file(str(path / OWN_FORMAT)),
                          str(path / OWN_FORMAT))
    return LoadedRun(path, runner)


def _trained_phases(run: LoadedRun) -> list[int]:
    state = run.runner.run_dir.read_state()
    return sorted(int(row) for row, phase in state["phases"].items() if phase.get("trained"))


def _portable_config(run: LoadedRun) -> dict[str, Any]:
    """The run's configuration without where its data, reference runs and outputs lay on this machine (an export
    carries its tasks in stream.json)."""
    from .train.run_record import LOCATIONS

    data = run.config.to_dict()
    for key in (*LOCATIONS, "output_dir", "unseen_tasks", "general_tasks"):
        data[key] = None
    return data
def _is_static(run: LoadedRun) -> bool:
    banks = find_lora_banks(run.model)
    return bool(banks) and all(bank.mixer is None for bank in banks.values())


def _evaluated_model(run: LoadedRun):
    """``evaluated_model(model)`` of a method whose evaluation uses other weights than its trained state (the merge
    of its task vectors: methods/merging.py), else None."""
    return getattr(getattr(run.method, "base", run.method), "evaluated_model", None)


def _outside_the_weights(run: LoadedRun) -> str | None:
    """Why the run's learned state cannot live in the model's own weights (so that merge would write a model that
    does not reproduce it), or None. Generic: the method's own forward/generate (soft prompts fed as inputs), a
    task id at test time, or trained parameters that are neither LoRAs nor parameters of the architecture."""
    from .methods.base import overrides

    parts = getattr(run.method, "parts", [run.method])
    own = [f"{p.name}.{hook}" for p in parts for hook in ("forward", "generate") if overrides(type(p), hook)]
    if own:
        return f"it computes its outputs through its own {' and '.join(own)} (e.g. learned soft prompts)"
    if run.method.uses_task_id_at_test:
        return "it needs the task id at test time"
    lora = {f"{name}.{kind}.{i}" for name, bank in find_lora_banks(run.model).items()
            for kind in ("lora_A", "lora_B") for i in range(bank.num_loras)}
    architecture = _architecture_parameter_names(run.model)
    extra = [n for n in run.runner.trainable_state() if n not in lora and architecture is not None
             and n.replace(".base.", ".") not in architecture]
    if extra:
        return f"it trains parameters outside the model's architecture ({', '.join(extra[:3])})"
    return None


def _architecture_parameter_names(model) -> set[str] | None:
    """Parameter names of the model's own class built from its config on the meta device (None if it cannot)."""
    try:
        with torch.device("meta"):
            skeleton = type(model)(model.config)
    except Exception:  # a model class that cannot be built this way: the other checks still apply
        return None
    return {name for name, _ in skeleton.named_parameters(remove_duplicate=False)}


def _not_in_weights_error(run: LoadedRun, reason: str, command: str) -> ContinualLMError:
    return ContinualLMError(f"method {run.config.method}: its learned state cannot be merged into the model's "
                            f"weights, nor exported as peft adapters ({reason}); `continual-lm {command}` would "
                            f"write a model that does not reproduce the run. Use the run itself: `continual-lm "
                            f"predict {run.path} ...` or continual_lm.load_run")


def _base_model(run: LoadedRun) -> str:
    """The base model an adapter names: the Hub id of an alias (smollm2-135m -> HuggingFaceTB/SmolLM2-135M-Instruct)
    or of a hub model, else the model as the run gave it (a folder, a .gguf file, a tiny test model)."""
    return _hub_model(run) or run.config.model


def _peft_adapter(run: LoadedRun, out: Path, pieces: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int,
                  alpha: float) -> None:
    from peft import LoraConfig

    lora = run.config.lora
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in pieces})
    task_type = "SEQ_2_SEQ_LM" if run.runner.backbone.is_seq2seq else "CAUSAL_LM"
    LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=lora.dropout, target_modules=suffixes, task_type=task_type,
               base_model_name_or_path=_base_model(run)).save_pretrained(str(out))
    tensors = {}
    for name, (A, B) in pieces.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.detach().contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.detach().contiguous().cpu()
    save_file(tensors, str(out / "adapter_model.safetensors"))


def export_run(run: LoadedRun, out: str | Path, fmt: str = "peft", *, push_to_hub: str | None = None,
               private: bool = False) -> dict[str, Any]:
    """Write every task's LoRA as a peft adapter folder; for sum-of-LoRA methods also one combined adapter that
    reproduces the run. Input-dependent mixtures (AM-LoRA, SAPT, MoELoRA) are exported in the project's own format
    (banks + selector in safetensors, config.yaml, the tasks' definitions in stream.json: ``load_run(out)`` loads
    it) next to the per-task adapters. Every export is Hub-ready: adapters name the Hub id of the base model, and a
    model card (README.md) describes the stream, the method, the metrics and how to load it. ``push_to_hub``: also
    upload the folder to that Hub repository (created if absent)."""
    from .hub import model_card

    if fmt != "peft":
        raise ContinualLMError(f"--format {fmt!r}: expected 'peft'")
    if _evaluated_model(run) is not None:
        raise ContinualLMError(f"method {run.config.method} evaluates a merge of its task vectors, which no LoRA "
                               f"adapter holds (a TIES/DARE/MagMax merge is not low-rank); use `continual-lm merge` "
                               f"to write the evaluated model")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ContinualLMError(f"export directory {out} already exists and is not empty")
    banks = find_lora_banks(run.model)
    if not banks:
        reason = _outside_the_weights(run)
        if reason:
            raise _not_in_weights_error(run, reason, "export")
        raise ContinualLMError(f"method {run.config.method} has no LoRAs to export; use `continual-lm merge` to "
                               f"write the fine-tuned model")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora = run.config.lora
    count = min(bank.num_loras for bank in banks.values())
    written = []
    for index in range(count):
        label = run.tasks[index].name if count == len(run.tasks) else f"lora{index}"
        folder = tmp / f"task_{index:02d}_{label}"
        _peft_adapter(run, folder, {n: (b.lora_A[index], b.lora_B[index]) for n, b in banks.items()}, lora.r,
                      lora.alpha)
        written.append(folder.name)
    from .version import __version__

    summary: dict[str, Any] = {"method": run.config.method, "model": run.config.model, "base_model": _base_model(run),
                               "benchmark": run.runner.stream.benchmark, "order": run.runner.stream.order,
                               "task_names": [t.name for t in run.tasks], "tasks": written,
                               "trained_phases": _trained_phases(run), "continual_lm": __version__}
    if _is_static(run):
        stacked = {n: b.stacked() for n, b in banks.items()}
        # scaling alpha/r per LoRA == (alpha*T) / (r*T) for the rank-(r*T) concatenation
        _peft_adapter(run, tmp / "combined", stacked, lora.r * count, lora.alpha * count)
        summary["combined"] = "combined"
        summary["note"] = "load 'combined' with peft.PeftModel.from_pretrained to reproduce the run's model"
    else:
        state = run.runner.trainable_state()
        # every LoRA, also those never trained (InfLoRA-style designed down-projections of GainLoRA)
        state.update({f"{n}.{k}": p for n, b in banks.items() for k, p in b.named_parameters()
                      if k.startswith("lora_")})
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / OWN_FORMAT))
        atomic_write_yaml(tmp / "config.yaml", _portable_config(run))
        atomic_write_json(tmp / STREAM_JSON, stream_definition(run.runner.stream, run.runner.collator.max_new_tokens))
        summary["own_format"] = OWN_FORMAT
        summary["note"] = (f"{run.config.method} mixes its LoRAs input-dependently, which a static peft adapter "
                           f"cannot express: {OWN_FORMAT} + config.yaml + {STREAM_JSON} hold the LoRA banks, the "
                           f"selector and the tasks' definitions in continual_lm's own format: load this folder with "
                           f"continual_lm.load_run; the per-task folders are standard peft adapters of the "
                           f"individual LoRAs")
    results_path = run.path / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else None
    atomic_write_json(tmp / EXPORT_JSON, summary)
    atomic_write_text(tmp / "README.md", model_card(summary, results, base_model=_hub_model(run),
                                                    model=run.config.model, seq2seq=run.runner.backbone.is_seq2seq))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    if push_to_hub:
        from .hub import push_to_hub as push

        summary["pushed"] = push(out, push_to_hub, private=private)
    return summary


def _hub_model(run: LoadedRun) -> str | None:
    """The Hub id of the run's base model (model card front matter), None for local and tiny test models."""
    from .models.backbone import hub_id

    return hub_id(run.config.model)


def merge_run(run: LoadedRun, out: str | Path) -> Path:
    """A standalone Hugging Face model folder with the LoRAs merged into the weights (static methods only)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ContinualLMError(f"merge directory {out} already exists and is not empty")
    fold = _evaluated_model(run)
    if fold is None:  # merging methods evaluate a merge of their task vectors: that merge is what is written
        reason = _outside_the_weights(run)
        if reason:
            raise _not_in_weights_error(run, reason, "merge")
    model = fold(run.model) if fold is not None else run.model  # merging methods: their merged weights, no banks
    banks = find_lora_banks(model)
    if banks and not _is_static(run):
        raise ContinualLMError(f"method {run.config.method} mixes its LoRAs depending on the input; its model cannot "
                               f"be merged into static weights (use `continual-lm export`)")
    with torch.no_grad():
        for name, bank in banks.items():
            bank.base.weight += bank.delta_weight().to(bank.base.weight.dtype)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, bank.base)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    run.tokenizer.save_pretrained(str(tmp))
    (tmp / "continual_lm_merge.json").write_text(json.dumps({"run": str(run.path), "method": run.config.method}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
