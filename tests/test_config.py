"""Configuration: numbers as people write them in YAML, the transformers/peft names as aliases, readable --help."""
import argparse
import dataclasses

import pytest
from torch import nn

from continual_lm.cli import build_parser, options_from_args
from continual_lm.config import ALIASES, RunConfig
from continual_lm.errors import ContinualLMError


def _yaml(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def _run_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


# ---- numbers ---------------------------------------------------------------------------------------------------
def test_yaml_exponent_numbers_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; the config reads it as the number it is, everywhere."""
    config = RunConfig.from_yaml(_yaml(tmp_path, "lr: 1e-3\nweight_decay: 1E-2\nwarmup_ratio: .5e-1\n"
                                                 "max_train_per_task: 1e3\nlora: {dropout: 5e-2}\n"
                                                 "method_options: {amlora: {l1: 1e-5}}\n"))
    assert config.lr == 1e-3 and config.weight_decay == 0.01 and config.warmup_ratio == 0.05
    assert config.max_train_per_task == 1000 and isinstance(config.max_train_per_task, int)
    assert config.lora.dropout == 0.05
    assert config.method_options["amlora"]["l1"] == 1e-5
    assert config.given >= {"lr", "weight_decay", "max_train_per_task", "lora.dropout", "options.amlora.l1"}


def test_numbers_written_as_text_are_read_and_others_refused():
    assert RunConfig.from_dict({"lr": "2e-4", "epochs": "3"}).lr == 2e-4
    assert RunConfig.from_dict({"epochs": "3"}).epochs == 3
    with pytest.raises(ContinualLMError, match=r"--lr: expected a finite number \(e\.g\. 1e-4\) or null, got 'fast'"):
        RunConfig.from_dict({"lr": "fast"})
    with pytest.raises(ContinualLMError, match="--epochs: expected an integer, got 1.5"):
        RunConfig.from_dict({"epochs": 1.5})


# ---- aliases ---------------------------------------------------------------------------------------------------
def test_transformers_and_peft_names_in_yaml(tmp_path):
    aliased = RunConfig.from_yaml(_yaml(tmp_path, """
learning_rate: 1e-4
num_train_epochs: 2
per_device_train_batch_size: 4
per_device_eval_batch_size: 32
gradient_accumulation_steps: 2
lr_scheduler_type: cosine
model_name_or_path: tiny-random-llama
lora_r: 16
lora:
  lora_alpha: 32
  lora_dropout: 0.05
  target_modules: all-linear
"""))
    ours = RunConfig.from_dict({"lr": 1e-4, "epochs": 2, "batch_size": 4, "eval_batch_size": 32, "grad_accum": 2,
                                "scheduler": "cosine", "model": "tiny-random-llama",
                                "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["all-linear"]}})
    assert aliased == ours
    assert aliased.given == ours.given  # a preset sees the aliased values as given


def test_peft_target_modules_string_and_top_level_lora_names():
    config = RunConfig.from_dict({"target_modules": "q_proj, v_proj", "lora_alpha": 8, "lora_dropout": 0.0})
    assert config.lora.targets == ["q_proj", "v_proj"] and config.lora.alpha == 8 and config.lora.dropout == 0.0


@pytest.mark.parametrize("data, names", [
    ({"lr": 1e-3, "learning_rate": 1e-4}, "lr and learning_rate"),
    ({"num_train_epochs": 2, "epochs": 3}, "num_train_epochs and epochs"),
    ({"lora_r": 4, "lora": {"r": 8}}, "lora_r and lora.r"),
    ({"target_modules": "all-linear", "lora": {"targets": ["q_proj"]}}, "target_modules and lora.targets"),
    ({"lora": {"lora_alpha": 8, "alpha": 16}}, "lora.lora_alpha and lora.alpha"),
])
def test_one_value_under_two_names_is_an_error_naming_both(data, names):
    with pytest.raises(ContinualLMError, match=f"run.yaml: {names} are two names of one option"):
        RunConfig.from_dict(data, source="run.yaml")


def test_unknown_option_suggests_the_alias():
    with pytest.raises(ContinualLMError, match="learning_rat.*Did you mean 'learning_rate'"):
        RunConfig.from_dict({"learning_rat": 1e-3})


def test_aliases_on_the_command_line():
    args = _run_args(["--learning-rate", "1e-4", "--num-train-epochs", "2", "--per-device-train-batch-size", "4",
                      "--gradient-accumulation-steps", "3", "--lr-scheduler-type", "linear",
                      "--target-modules", "all-linear", "--lora-r", "4", "--model-name-or-path", "tiny-random-t5"])
    data = options_from_args(args)
    assert data == {"lr": 1e-4, "epochs": 2, "batch_size": 4, "grad_accum": 3, "scheduler": "linear",
                    "model": "tiny-random-t5", "lora": {"r": 4, "targets": ["all-linear"]}}


def test_two_names_on_the_command_line_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run_args(["--lr", "1e-3", "--learning-rate", "1e-4"])
    assert exit_info.value.code == 2
    assert "--lr and --learning-rate are two names of one option" in capsys.readouterr().err


def test_command_line_wins_over_an_aliased_yaml_value(tmp_path):
    path = _yaml(tmp_path, "learning_rate: 1e-4\nper_device_train_batch_size: 2\n")
    data = options_from_args(_run_args(["--config", str(path), "--lr", "3e-4"]))
    assert data == {"lr": 3e-4, "batch_size": 2}
    assert RunConfig.from_dict(data).lr == 3e-4


def test_every_alias_names_a_real_option():
    config = RunConfig()
    for ours in ALIASES.values():
        obj, name = (config.lora, ours.split(".")[1]) if ours.startswith("lora.") else (config, ours)
        assert hasattr(obj, name), ours


# ---- all-linear ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["tiny-random-llama", "tiny-random-t5", "tiny-random-bert"])
def test_all_linear_targets_what_peft_targets(model_name):
    """`all-linear` adapts the same layers as peft's LoraConfig(target_modules="all-linear"): every nn.Linear but the
    output head."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from continual_lm.models.backbone import load_backbone
    from continual_lm.models.inject import inject_lora_banks

    ours = inject_lora_banks(load_backbone(model_name, seed=0).model, ["all-linear"], r=2, alpha=4, dropout=0.0)
    peft_model = get_peft_model(load_backbone(model_name, seed=0).model, LoraConfig(r=2, target_modules="all-linear"))
    theirs = {name.removeprefix("base_model.model.") for name, m in peft_model.named_modules()
              if isinstance(m, LoraLayer)}
    assert set(ours) == theirs and len(theirs) > 4
    head = load_backbone(model_name, seed=0).model.get_output_embeddings()
    assert isinstance(head, nn.Linear)  # the one linear layer left out


def test_all_linear_from_the_config_reaches_the_method():
    from continual_lm.methods.base import build_method
    from continual_lm.models.backbone import load_backbone

    config = RunConfig.from_dict({"model": "tiny-random-llama", "method": "seqlora", "target_modules": "all-linear"})
    backbone = load_backbone(config.model, seed=0)
    method = build_method(config)
    method.setup(backbone.model, backbone)
    assert len(method.banks) == 14  # 2 layers x (q, k, v, o, gate, up, down); not the output head
    assert "lm_head" not in method.banks and type(backbone.model.lm_head) is nn.Linear


# ---- --help ----------------------------------------------------------------------------------------------------
def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_help_is_readable_and_shows_every_default():
    run = _run_parser()
    text = run.format_help()
    assert "M__" not in text and "m__" not in text
    assert "--amlora-l1 L1" in text and "--lr LR, --learning-rate LR" in text
    assert "--target-modules" in text and "all-linear" in text
    missing = [a.option_strings[0] for a in run._actions
               if a.option_strings and a.dest not in ("help", "resume") and "(default: " not in (a.help or "")]
    assert not missing, missing
    assert "(default: computed: 1e-3 for PET methods, 2e-5 for full fine-tuning)" in " ".join(text.split())


def test_every_computed_method_default_says_what_it_is():
    """A method option whose default is None stands for a computed value: its help says which."""
    from continual_lm.methods.registry import METHODS, method_class

    vague = [f"{name}.{f.name}" for name in METHODS for f in dataclasses.fields(method_class(name).Options)
             if f.default is None and "none_means" not in f.metadata]
    assert not vague, vague
    text = " ".join(_run_parser().format_help().split())
    assert "sapt-lora: query_lr (default: computed: the run's lr)" in text


def test_the_readme_yaml_example_is_a_valid_configuration():
    from pathlib import Path

    from continual_lm.io_utils import load_yaml
    from continual_lm.methods.base import build_method

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in readme.split("```yaml\n")[1:] if b.startswith("# run.yaml")).split("```")[0]
    config = RunConfig.from_dict(load_yaml(block), source="README.md")
    assert config.max_train_per_task == 1000 and config.lr == 1e-4
    assert config.method_options == {"amlora": {"l1": 1e-5}, "migu": {"threshold": 0.7}}
    build_method(config)  # the method options are valid for that method
