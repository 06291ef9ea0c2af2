"""continual_lm: continual learning of language models with parameter-efficient fine-tuning.

The public Python API (docs/api.md); every name is imported on first use, so ``import continual_lm`` stays cheap:

    import continual_lm

    results = continual_lm.run(method="inclora", benchmark="demo", output_dir="runs/demo-inclora")
    stream = continual_lm.Stream([continual_lm.task_from_records("intent", train_records, test_records)])
    results = continual_lm.run(method="inclora", stream=stream, callbacks=[MyCallback()], output_dir="runs/mine")
    continual_lm.load_run("runs/mine").predict([{"input": "...", "task": "intent"}])
"""
from .version import __version__

_EXPORTS = {
    "run": "continual_lm.api",
    "load_run": "continual_lm.api",
    "RunConfig": "continual_lm.config",
    "LoRAConfig": "continual_lm.config",
    "Callback": "continual_lm.callbacks.base",
    "Method": "continual_lm.methods.base",
    "register_method": "continual_lm.methods.base",
    "Stream": "continual_lm.data.stream",
    "Task": "continual_lm.data.tasks",
    "Example": "continual_lm.data.tasks",
    "task_from_records": "continual_lm.data.stream",
    "task_from_file": "continual_lm.data.stream",
    "task_from_dataset": "continual_lm.data.stream",
    "ContinualLMError": "continual_lm.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'continual_lm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
