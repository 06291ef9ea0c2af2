"""Paper presets: every shipped file is valid and sourced, values land below the user's, runs record what was used."""
import json
import shutil

import pytest
import yaml

from continual_lm import presets
from continual_lm.cli import build_parser, config_from_args
from continual_lm.config import RunConfig
from continual_lm.errors import ContinualLMError
from continual_lm.methods.registry import METHODS
from continual_lm.presets import load_preset, preset_methods, preset_names, resolve_preset
from continual_lm import run

from helpers import run_crashed_in_first_evaluation_then_resumed, tiny_config


@pytest.mark.parametrize("preset", preset_names())
def test_every_shipped_preset_file_is_valid_and_every_value_has_a_source(preset):
    methods = preset_methods(preset)
    assert methods and set(methods) <= set(METHODS)  # one file per registered method name
    for method in methods:
        data = load_preset(preset, method)  # raises on an unknown field/option, a value without source, a bad value
        for entry in data["entries"]:
            flat = presets._flatten(entry.get("set"))
            assert set(flat) == set(entry.get("source") or {}), (method, entry)
            assert all(isinstance(why, str) and why for why in (entry.get("not_given") or {}).values())
    assert "amlora" in methods and "seqlora" in methods and "lfpt5" in methods


def _broken_preset(tmp_path, monkeypatch, entry):
    folder = tmp_path / "presets" / "paper"
    folder.mkdir(parents=True)
    (folder / "amlora.yaml").write_text(yaml.safe_dump({"paper": "x (arXiv:0)", "entries": [entry]}))
    monkeypatch.setattr(presets, "PRESET_ROOT", tmp_path / "presets")


@pytest.mark.parametrize("entry, message", [
    ({"set": {"lr": 1.0e-4}}, "'lr' has no source"),
    ({"set": {"options": {"l2": 1.0}}, "source": {"options.l2": "x"}}, "unknown option 'l2'"),
    ({"set": {"seed": 1}, "source": {"seed": "x"}}, "unknown preset field 'seed'"),
    ({"set": {"lr": "fast"}, "source": {"lr": "x"}}, "entry 1"),
    ({"set": {"options": {"l1": -1.0}}, "source": {"options.l1": "x"}}, "--amlora-l1"),
    ({"match": {"benchmark": ["lnog"]}}, "unknown benchmark 'lnog'"),
    ({"not_given": {"lr": ""}}, "must say what is used instead"),
])
def test_a_bad_preset_file_is_refused_naming_file_and_field(tmp_path, monkeypatch, entry, message):
    _broken_preset(tmp_path, monkeypatch, entry)
    with pytest.raises(ContinualLMError, match=message) as err:
        load_preset("paper", "amlora")
    assert "amlora.yaml" in str(err.value)


def test_preset_numbers_written_1e_4_are_numbers(tmp_path, monkeypatch):
    folder = tmp_path / "presets" / "paper"
    folder.mkdir(parents=True)
    (folder / "amlora.yaml").write_text('paper: "x (arXiv:0)"\nentries:\n  - set: {lr: 1e-4, options: {l1: 5E-5}}\n'
                                        '    source: {lr: "x", options.l1: "x"}\n')
    monkeypatch.setattr(presets, "PRESET_ROOT", tmp_path / "presets")
    entry = load_preset("paper", "amlora")["entries"][0]
    assert entry["set"]["lr"] == 1e-4 and entry["set"]["options"]["l1"] == 5e-5


def _resolved(family="t5", **settings):
    config = RunConfig.from_dict({"method": "amlora", "preset": "paper", **settings})
    return resolve_preset(config, family)


def test_amlora_paper_preset_has_the_papers_lambda_lists_for_the_long_orders():
    config, record = _resolved(benchmark="long", order="4")
    l1 = config.method_options["amlora"]["l1"]
    assert l1 == [0.0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.3] + [0.001] * 8  # §7.3 (14 values) + the filled yahoo
    assert "task 15 (yahoo) has no value" in record["applied"]["options.amlora.l1"]["source"]
    assert config.lr == 1e-4 and config.epochs == 1 and config.batch_size == 8  # §7.3, T5-Large
    assert (config.max_train_per_task, config.max_test_per_class) == (1000, 500)  # §4.1
    config, record = _resolved(benchmark="long", order="5")
    assert config.method_options["amlora"]["l1"][:3] == [1e-4, 1e-4, 1e-3]  # what the text gives
    assert "tasks 4-15 have no value" in record["applied"]["options.amlora.l1"]["source"]
    config, record = _resolved(benchmark="long", order="sapt4")  # SAPT's order 4 = order 6: no lambda in the text
    assert "l1" not in config.method_options.get("amlora", {})
    assert "order 6" in record["not_given"]["amlora"]["options.amlora.l1"]
    config, _ = _resolved(benchmark="standard", order="2", family="llama")
    assert config.method_options["amlora"]["l1"] == 1e-5 and config.batch_size == 1  # LLaMA2-7B: 1 per GPU
    config, record = _resolved(benchmark="long", order="4", tasks=["mnli", "cb"])  # an explicit task list: no
    assert "l1" not in config.method_options.get("amlora", {})  # per-position list can apply


def test_values_the_user_gives_win_even_when_equal_to_the_default(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("epochs: 1\nmethod_options: {amlora: {mode: new}}\n")
    args = build_parser().parse_args(["run", "--config", str(yaml_file), "--method", "amlora", "--preset", "paper",
                                      "--benchmark", "standard", "--batch-size", "8", "--lora-r", "4"])
    config, record = resolve_preset(config_from_args(args), "llama")
    assert config.batch_size == 8  # given (= the default), although the preset says 1 for LLaMA
    assert config.lora.r == 4 and config.method_options["amlora"]["mode"] == "new"
    assert config.lr == 1e-4 and config.method_options["amlora"]["l1"] == 1e-5  # not given: the paper's
    assert record["kept_given"]["batch_size"] == {"preset": 1, "used": 8, "source": record["kept_given"]
                                                  ["batch_size"]["source"]}
    assert "options.amlora.mode" in record["kept_given"] and "lr" in record["applied"]
    direct = RunConfig(method="amlora", benchmark="standard", preset="paper", batch_size=4)  # Python: non-default
    config, _ = resolve_preset(direct, "llama")  # values count as given
    assert config.batch_size == 4 and config.lr == 1e-4


def test_composition_applies_the_base_file_then_the_plugins():
    config, record = _resolved(benchmark="standard", method="amlora+replay")
    assert config.method_options["replay"]["fraction"] == 0.02 and config.lr == 1e-4
    assert set(record["papers"]) == {"amlora", "replay"}


def test_point_10_baseline_presets_match_the_compared_setups():
    config, _ = resolve_preset(RunConfig.from_dict({"method": "lfpt5", "benchmark": "superni", "preset": "paper"}),
                               "t5")
    assert config.method_options["lfpt5"]["prompt_length"] == 300  # SAPT App. C
    assert config.method_options["lfpt5"]["pseudo_fraction"] == 0.02
    config, _ = resolve_preset(RunConfig.from_dict({"method": "l2p", "preset": "paper"}), "t5")
    assert config.method_options["l2p"]["query"] == "hidden"  # the paper's frozen-feature query


def test_unknown_preset_and_missing_method_file_are_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(ContinualLMError, match="--preset: unknown preset 'papr'.*paper"):
        resolve_preset(RunConfig.from_dict({"preset": "papr"}), "llama")
    folder = tmp_path / "presets"
    shutil.copytree(presets.PRESET_ROOT / "paper", folder / "paper")
    (folder / "paper" / "ewc.yaml").unlink()
    monkeypatch.setattr(presets, "PRESET_ROOT", folder)
    with pytest.raises(ContinualLMError, match="no preset file for method 'ewc'"):
        resolve_preset(RunConfig.from_dict({"method": "seqlora+ewc", "preset": "paper"}), "llama")


def test_model_family_comes_from_the_config_without_weights():
    assert presets.model_family_of(RunConfig(model="tiny-random-t5")) == "t5"
    assert presets.model_family_of(RunConfig(model="tiny-random-llama")) == "llama"


def test_a_preset_run_records_every_option_the_lr_used_and_the_preset(tmp_path, monkeypatch):
    def config_at(path):
        return tiny_config(path, method="amlora", preset="paper", lr=None, tasks=["sentiment", "reverse"],
                           max_train_per_task=4, max_test_per_task=2)

    # killed after phase 0, then resumed: the resumed run reads its resolved config.yaml and keeps the record
    results = run_crashed_in_first_evaluation_then_resumed(config_at, tmp_path)
    out = tmp_path / "run"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["preset"] == "paper" and saved["lr"] == 1e-4  # the paper's lr, not our 1e-3 default
    assert saved["method_options"] == {"amlora": {"l1": 1e-5, "mode": "all", "attention_samples": 32}}
    assert saved["batch_size"] == 4  # tiny_config's value (given) beat the preset's 1 for LLaMA
    assert results["preset"]["applied"]["lr"]["source"].startswith("§7.3")
    assert results["preset"]["kept_given"]["batch_size"]["preset"] == 1
    assert json.loads((out / "preset.json").read_text()) == results["preset"]
    assert json.loads((out / "results.json").read_text())["preset"]["name"] == "paper"


def test_without_a_preset_config_yaml_still_records_every_option_and_the_lr(tmp_path):
    results = run(tiny_config(tmp_path, method="inclora+replay", lr=None, tasks=["sentiment", "reverse"],
                              max_train_per_task=4, max_test_per_task=2))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["lr"] == 1e-3 and saved["preset"] is None and results["preset"] is None
    assert saved["method_options"] == {"inclora": {}, "replay": {"fraction": 0.02, "count": None}}
    assert not (tmp_path / "run" / "preset.json").exists()


def test_the_preset_files_ship_in_the_wheel():
    import tomllib

    from helpers import ROOT

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "continual_lm.presets"]
    files = [p.relative_to(presets.PRESET_ROOT) for p in presets.PRESET_ROOT.glob("*/*.yaml")]
    assert files and all(any(f.match(pattern) for pattern in patterns) for f in files)
