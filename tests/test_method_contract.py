"""The contract every registered method keeps (issue 20), parametrised over ``methods/registry.py::METHODS`` so that
a method registered later is checked without editing this file; a plugin is checked composed on a base method that
accepts it (``helpers.method_specs``).

1. Its class's ``name`` is the name it is registered under.
2. It declares its protocol: ``uses_task_id_at_train``, ``uses_task_id_at_test``, ``uses_replay``,
   ``uses_pseudo_samples`` and, for a base method, ``pet_kind`` are assigned in the method's own module (on its class
   or on a base class defined there), not inherited from the defaults of methods/base.py or of a shared base such as
   ``PromptMethod`` (docs/methods.md, "Adding a method"). The values are checked by tests/test_protocol.py.
3. ``continual-lm plan`` sets it up on the meta device (no weights, no loaded backbone) and counts exactly the bytes
   a real run checkpoints after each phase.
4. A run killed anywhere resumes to the uninterrupted run: the same matrix, predictions, final trainable tensors and
   method state: tests/test_kill_every_method.py, over the same ``helpers.method_specs()``, kills every method at
   random points of its timeline in every ``--keep-checkpoints`` mode (one place, so CI runs each method's resume
   once).
"""
import inspect

import pytest

from continual_lm.methods.base import PROTOCOL_FLAGS, Method
from continual_lm.methods.prompt_method import PromptMethod
from continual_lm.methods.registry import METHODS, method_class, split_method_spec
from continual_lm.plan import plan
from continual_lm.train.checkpoint import RunDir
from continual_lm import run

from helpers import method_specs, skip_report_and_gc, smallest_config

SPECS = method_specs()
# Shorter extra training of a method's own (not its structure), to keep the whole file near a minute of CPU time:
# SAPT trains a pseudo-input generator for generator_epochs (80) passes after every task.
QUICK_OPTIONS = {"sapt-lora": {"generator_steps": 2}, "sapt-prompt": {"generator_steps": 2}}
DECLARED = tuple(PROTOCOL_FLAGS.values())
PET_KINDS = ("lora", "prompt", "full")


def undeclared(cls: type[Method]) -> list[str]:
    """The declarations ``cls`` leaves to an inherited default: names assigned on no class of its MRO that is
    defined in its own module."""
    own = [c for c in cls.__mro__ if c.__module__ == cls.__module__]
    names = DECLARED if cls.is_plugin else DECLARED + ("pet_kind",)
    return [name for name in names if not any(name in vars(c) for c in own)]


def test_every_registered_method_is_checked():
    assert {part for spec in SPECS for part in split_method_spec(spec)} == set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_the_class_name_is_the_registry_name(name):
    assert method_class(name).name == name


@pytest.mark.parametrize("name", METHODS)
def test_the_method_declares_its_protocol(name):
    cls = method_class(name)
    assert undeclared(cls) == [], (f"{cls.__module__}.{cls.__name__} inherits {undeclared(cls)} instead of declaring "
                                   f"them (docs/methods.md, 'Adding a method')")
    assert all(isinstance(inspect.getattr_static(cls, flag), bool) for flag in DECLARED)
    if not cls.is_plugin:
        kind = inspect.getattr_static(cls, "pet_kind")
        assert isinstance(kind, property) or kind in PET_KINDS  # a property: the kind is an option (single, mtl)
        if issubclass(cls, PromptMethod):
            assert kind == "prompt" and cls.soft_prompt_tuning


def test_the_check_finds_a_silently_inherited_declaration():
    class Forgetful(Method):  # defined here: its module declares nothing
        name = "forgetful"

    class Careful(Forgetful):
        uses_task_id_at_train = uses_task_id_at_test = uses_replay = uses_pseudo_samples = False
        pet_kind = "lora"

    assert undeclared(Forgetful) == list(DECLARED) + ["pet_kind"] and undeclared(Careful) == []


def checkpoints(run_dir, rows) -> list[tuple]:
    store = RunDir(run_dir)
    return [store.load_checkpoint(row) for row in rows]


def contract_config(where, spec: str):
    quick = {name: QUICK_OPTIONS[name] for name in split_method_spec(spec) if name in QUICK_OPTIONS}
    return smallest_config(where, spec, method_options=quick)


@pytest.mark.parametrize("spec", SPECS)
def test_plan_counts_exactly_the_bytes_a_run_checkpoints(spec, tmp_path, monkeypatch):
    skip_report_and_gc(monkeypatch)
    reference = run(contract_config(tmp_path / "a", spec))
    rows = [row for row, scores in enumerate(reference["matrix"]) if any(s is not None for s in scores)]
    trained = checkpoints(tmp_path / "a" / "run", rows)

    planned = plan("tiny-random-llama", spec, 2)  # the meta device: no weights and no backbone object
    assert planned.checkpoint_bytes_per_phase == [sum(t.numel() * t.element_size() for t in weights.values())
                                                  for weights, _, _ in trained]

