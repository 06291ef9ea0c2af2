"""Run configuration: one dataclass, loaded from YAML and/or CLI options, validated with clear errors.

A run directory's ``config.yaml`` holds the fully resolved configuration (every default filled in, every method
option's value, the learning rate used), so a run can be repeated or resumed from it alone.

Which values the user gave is kept in ``RunConfig.given`` (dotted keys: "lr", "lora.r", "options.amlora.l1"), set by
``from_dict``/``from_yaml`` from the keys present; a preset (``--preset paper``, continual_lm/presets) fills only the
values not given, even where a given value equals the default. A RunConfig built directly in Python has
``given = None``: then every value that differs from its default counts as given.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ContinualLMError, unknown_choice
from .io_utils import load_yaml

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
# The names people type from transformers' TrainingArguments and peft's LoraConfig, accepted for ours in a YAML
# configuration, a Python mapping and on the command line (--learning-rate, ...). Dotted keys: "lora.r" is r inside
# the `lora:` mapping. One value given under two of its names is an error naming both.
ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "scheduler",
    "model_name_or_path": "model",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_targets": "lora.targets",
    "target_modules": "lora.targets",
    "lora.lora_alpha": "lora.alpha",
    "lora.lora_dropout": "lora.dropout",
    "lora.target_modules": "lora.targets",
}
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")
# Options added later: a run directory whose config.yaml or run.json predates the option gets this value (so that it
# resumes as it started), a new run the field's default (today the same for group_by_length; kept should it change).
EARLIER_RUNS = {"group_by_length": False}


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    targets: list[str] | None = None  # module-name suffixes, re:REGEX or all-linear; None = the model type's query and
    #                                  value projections. A string is read as a comma-separated list.


@dataclass
class RunConfig:
    # what to run
    benchmark: str = "demo"
    order: str | None = None  # None = the benchmark's first order
    tasks: list[str] | None = None  # explicit task sequence overriding the order
    stream_file: str | None = None  # the YAML of a `custom` stream
    data_dir: str | None = None  # folder holding CL_Benchmark/, SuperNI/, TRACE/ (else env CONTINUAL_LM_DATA)
    method: str = "seqlora"  # a registered method, optionally composed with plugins: "inclora+migu"
    model: str = "smollm2-135m"
    output_dir: str | None = None
    seed: int = 42
    # data sizes (seeded subsampling like the papers)
    max_train_per_task: int | None = None
    max_test_per_task: int | None = None
    max_train_per_class: int | None = None
    max_test_per_class: int | None = None
    max_input_length: int = 512
    max_target_length: int = 50
    prompt_task_name: bool = False
    allow_task_name_leak: bool = False  # explicit opt-in: task names in prompts for a method that claims no task id
    mlm_probability: float = 0.15  # masked LM: share of each corpus block's tokens that are targets (encoder-only)
    preset: str | None = None  # e.g. "paper": the papers' hyper-parameters, below the values given (presets/)
    # optimisation
    epochs: int = 1
    lr: float | None = None  # None = the method's default (1e-3 for PET methods, 2e-5 for full fine-tuning)
    batch_size: int = 8
    eval_batch_size: int = 16
    group_by_length: bool = False  # True: training batches of similar lengths (data/batching.py); False: plain shuffle
    grad_accum: int = 1
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # evaluation and references
    eval_all_tasks: bool = False
    eval_every: int = 1  # evaluate every K-th phase (and always the last); the other matrix rows stay null
    eval_final_only: bool = False  # evaluate the last phase only (the final row)
    single_task_from: str | None = None  # run dir of a `single` run, for FWT
    unseen_tasks: list[str] | None = None  # evaluated zero-shot after the stream (and on the base model); never trained
    report_to: str = "none"  # none | tensorboard | wandb (accelerate trackers)
    tracker_project: str | None = None  # the trackers' project (None = "continual_lm")
    tracker_run_name: str | None = None  # the run's name in the trackers (None = the run directory's name)
    general_tasks: list[str] | None = None  # lm-eval tasks scored on the base model before and the final model after
    general_task_dir: str | None = None  # folder of lm-eval task YAMLs (local tasks) for general_tasks
    general_limit: int | None = None  # examples per general task (lm-eval's limit); None = all
    # engine
    dtype: str = "float32"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    keep_checkpoints: str = "all"  # all | last
    trust_remote_code: bool = False
    progress: bool = True
    threads: int | None = None  # torch CPU threads; None = $CONTINUAL_LM_THREADS, else the policy of threads.py
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    given: frozenset[str] | None = field(default=None, repr=False, compare=False)  # not saved: see the docstring

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("given")
        return data

    def is_given(self, key: str) -> bool:
        """Whether the user gave the value at dotted ``key`` ("lr", "lora.r", "options.<method>.<field>")."""
        if self.given is not None:
            return key in self.given
        if key.startswith("options."):
            _, method, option = key.split(".", 2)
            return option in (self.method_options.get(method) or {})
        if key.startswith("lora."):
            name = key[len("lora."):]
            return getattr(self.lora, name) != getattr(LoRAConfig(), name)
        return getattr(self, key) != getattr(RunConfig(), key)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "configuration") -> "RunConfig":
        """A validated configuration from a mapping of options; errors name ``source`` (a file or "command line")."""
        data = canonical_options(data, source)
        names = {f.name for f in dataclasses.fields(cls)} - {"given"}
        for key in data:
            if key not in names:
                raise ContinualLMError(f"{source}: {unknown_choice('option', key, names | _top_level_aliases())}")
        lora = data.pop("lora", None) or {}
        lora_names = {f.name for f in dataclasses.fields(LoRAConfig)}
        for key in lora:
            if key not in lora_names:
                raise ContinualLMError(f"{source}: {unknown_choice('lora option', key, lora_names)}")
        config = cls(**data, lora=LoRAConfig(**lora), given=_given_keys(data, lora))
        try:
            config.validate()
        except ContinualLMError as err:
            if source in ("configuration", "command line"):
                raise
            raise ContinualLMError(f"{source}: {err}") from None
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(read_yaml_mapping(path), source=str(path))

    def validate(self) -> None:
        """Types first (a YAML file can hold anything), then ranges: every number finite."""
        if isinstance(self.order, int) and not isinstance(self.order, bool):
            self.order = str(self.order)  # YAML reads `order: 1` as an integer
        if isinstance(self.lora.targets, str):  # peft's target_modules may be one string: "all-linear", "q_proj,v_proj"
            self.lora.targets = [t.strip() for t in self.lora.targets.split(",") if t.strip()]
        _check_types(self, "")
        _check_types(self.lora, "lora_")

        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if value <= 0:
                raise ContinualLMError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")

        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "max_input_length", "max_target_length",
                     "eval_every"):
            positive(name)
        for name in ("max_train_per_task", "max_test_per_task", "max_train_per_class", "max_test_per_class",
                     "general_limit", "threads"):
            positive(name, allow_none=True)
        if not 0 <= self.seed <= MAX_SEED:
            raise ContinualLMError(f"--seed must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {self.seed!r}")
        if self.lr is not None and not self.lr > 0:
            raise ContinualLMError(f"--lr must be a positive number, got {self.lr!r}")
        if not 0 < self.mlm_probability < 1:
            raise ContinualLMError(f"--mlm-probability must be a number in (0, 1), got {self.mlm_probability!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ContinualLMError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio!r}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ContinualLMError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        for name, allowed in (("scheduler", SCHEDULERS), ("mixed_precision", MIXED_PRECISION), ("dtype", DTYPES),
                              ("keep_checkpoints", ("all", "last")), ("report_to", ("none", "tensorboard", "wandb"))):
            if getattr(self, name) not in allowed:
                raise ContinualLMError(f"--{name.replace('_', '-')}: {unknown_choice('value', getattr(self, name), allowed)}")
        if self.lora.r <= 0:
            raise ContinualLMError(f"--lora-r must be a positive integer, got {self.lora.r!r}")
        if self.lora.alpha <= 0:
            raise ContinualLMError(f"--lora-alpha must be positive, got {self.lora.alpha!r}")
        if not 0 <= self.lora.dropout < 1:
            raise ContinualLMError(f"--lora-dropout must be in [0, 1), got {self.lora.dropout!r}")
        for method, options in self.method_options.items():
            if not isinstance(options, dict):
                raise ContinualLMError(f"method_options.{method} must map option names to values, got {options!r}")
        if self.preset is not None and not self.preset:
            raise ContinualLMError("--preset: expected a preset name such as 'paper'")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML configuration file (empty file: {}), with clear errors."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())  # reads 1e-3 as a number, not as YAML 1.1's string
    except FileNotFoundError:
        raise ContinualLMError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ContinualLMError(f"config file {path} cannot be read: {err}") from None
    except yaml.YAMLError as err:
        raise ContinualLMError(f"config file {path} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ContinualLMError(f"config file {path}: expected a mapping of options, got {type(data).__name__}")
    return data or {}


def canonical_options(data: dict[str, Any], source: str = "configuration") -> dict[str, Any]:
    """``data`` with every alias (ALIASES: learning_rate, target_modules, lora.lora_alpha, ...) replaced by our name;
    a value given under two names is an error naming both. ``lora`` may be a mapping or a LoRAConfig."""
    if not isinstance(data, dict):
        raise ContinualLMError(f"{source}: expected a mapping of options, got {type(data).__name__}")
    lora = data.get("lora")
    if isinstance(lora, LoRAConfig):
        lora = dataclasses.asdict(lora)
    if lora is not None and not isinstance(lora, dict):
        raise ContinualLMError(f"{source}: lora must be a mapping with keys r, alpha, dropout, targets, got {lora!r}")
    flat = {k: v for k, v in data.items() if k != "lora"}
    flat.update({f"lora.{k}": v for k, v in (lora or {}).items()})
    named: dict[str, str] = {}  # our dotted name -> the name it was given under
    result: dict[str, Any] = {}
    for key, value in flat.items():
        ours = ALIASES.get(key, key)
        if ours in named:
            raise ContinualLMError(f"{source}: {named[ours]} and {key} are two names of one option ({ours}); "
                                   f"give it once")
        named[ours] = key
        if ours.startswith("lora."):
            result.setdefault("lora", {})[ours[len("lora."):]] = value
        else:
            result[ours] = value
    if lora is not None:
        result.setdefault("lora", {})
    return result


def _top_level_aliases() -> set[str]:
    return {alias for alias in ALIASES if "." not in alias}


def _given_keys(data: dict[str, Any], lora: dict[str, Any]) -> frozenset[str]:
    """The dotted keys of the values present in a configuration mapping (see ``RunConfig.is_given``)."""
    keys = {k for k in data if k not in ("lora", "method_options")}
    keys |= {f"lora.{k}" for k in lora}
    method_options = data.get("method_options")
    for method, options in (method_options.items() if isinstance(method_options, dict) else []):
        keys |= {f"options.{method}.{k}" for k in (options if isinstance(options, dict) else {})}
    return frozenset(keys)


MAX_SEED = 2**32 - 1  # numpy's limit; torch and random accept it too


def _check_types(obj: Any, prefix: str) -> None:
    """Each field of a config dataclass against its annotation (int, float, str, bool, list[str], dict, X | None);
    floats must be finite. Numbers written as text are read as numbers ("1e-3" for a float, 1e3 or "1000" for an
    integer). The error names the option as its flag."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind = hints[f.name]
        if kind is LoRAConfig:
            continue
        value = getattr(obj, f.name)
        args = typing.get_args(kind)
        optional = type(None) in args
        if optional:
            if value is None:
                continue
            kind = next(a for a in args if a is not type(None))
        value = _as_number(value, kind)
        setattr(obj, f.name, value)
        if not _is_instance(value, kind):
            expected = _EXPECTED.get(kind, str(kind)) + (" or null" if optional else "")
            raise ContinualLMError(f"--{(prefix + f.name).replace('_', '-')}: expected {expected}, got {value!r}")


def _as_number(value: Any, kind: Any) -> Any:
    """``value`` as a number of ``kind`` (float or int) where it is one written otherwise: a numeric string, or an
    integral float for an integer field (YAML reads ``1e3`` as 1000.0). Anything else is returned unchanged."""
    if kind not in (int, float) or isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            return value  # not a number: the type check names the option
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _is_instance(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is str:
        return isinstance(value, str)
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_is_instance(v, typing.get_args(kind)[0]) for v in value)
    if typing.get_origin(kind) is dict:
        return isinstance(value, dict)
    return True


_EXPECTED = {bool: "true or false", int: "an integer", float: "a finite number (e.g. 1e-4)", str: "a string",
             list[str]: "a list of strings", dict[str, dict[str, Any]]: "a mapping"}
