"""A run directory under hostile but realistic use (issue 18): nothing finished is lost, nothing the user made is
deleted, a resume or a reuse never mixes two configurations, remote code runs only when the command asks, and bad
input is a clear error before anything is written. Each test reproduces one reported defect."""
import errno
import json
import shutil

import pytest
import yaml

from continual_lm import run
from continual_lm.cli import main
from continual_lm.errors import ContinualLMError
from continual_lm.train import loop
from continual_lm.train.checkpoint import RunDir

from helpers import snapshot, tiny_config

TASKS = ["sentiment", "number_sign"]


class Crash(Exception):
    """Stands for a process killed at a chosen point."""


def tiny_args(out, *extra, tasks=TASKS) -> list[str]:
    """`continual-lm run` of a tiny inclora run on two demo tasks (a later option overrides an earlier one)."""
    return ["run", "--benchmark", "demo", "--method", "inclora", "--model", "tiny-random-llama", "--seed", "3",
            *(["--tasks", *tasks] if tasks else []), "--max-train-per-task", "4", "--max-test-per-task", "2",
            "--batch-size", "4", "--eval-batch-size", "8", "--max-input-length", "48", "--max-target-length", "4",
            "--lr", "0.005", "--no-progress", "--output-dir", str(out), *extra]


def killed_in_phase_1(argv) -> None:
    """Run ``argv`` killed at the start of phase 1's training (phase 0 trained, checkpointed and evaluated)."""
    original = loop.ContinualRunner.train_phase

    def crashing(self, phase):
        if phase.row == 1:
            raise Crash()
        return original(self, phase)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop.ContinualRunner, "train_phase", crashing)
        with pytest.raises(Crash):
            main(argv)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(tiny_args(out)) == 0
    return out


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory):
    out = tmp_path_factory.mktemp("unfinished") / "run"
    killed_in_phase_1(tiny_args(out))
    return out


def copy_of(run_dir, tmp_path, name="copy"):
    shutil.copytree(run_dir, tmp_path / name)
    return tmp_path / name


# ---- 2. --overwrite validates first and deletes only runs ----------------------------------------------------------
def test_overwrite_checks_everything_before_deleting_a_finished_run(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    assert main(tiny_args(out, "--lora-targets", "qproj", "--overwrite")) == 2
    assert "qproj" in capsys.readouterr().err
    assert snapshot(out) == before  # the finished run is untouched
    assert main(tiny_args(out, "--overwrite")) == 0  # the corrected command replaces it
    assert json.loads((out / "results.json").read_text())["method"] == "inclora"


def test_a_sweep_with_a_misspelt_method_keeps_its_finished_runs(finished, tmp_path, capsys):
    parent = tmp_path / "sweep"
    shutil.copytree(finished, parent / "seed3")
    before = snapshot(parent)
    assert main(tiny_args(parent, "--method", "inclra", "--seeds", "3", "4", "--overwrite")) == 2
    assert "inclra" in capsys.readouterr().err
    assert snapshot(parent) == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "thesis"
    (folder / "src").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\chapter{Results}\n")
    (folder / "src" / "main.py").write_text("print('hello')\n")
    before = snapshot(folder)
    for extra in (["--overwrite"], ["--seeds", "3", "4", "--overwrite"]):
        assert main(tiny_args(folder, *extra)) == 2
        err = capsys.readouterr().err
        assert "not a continual_lm run" in err and "thesis.tex" in err
        assert snapshot(folder) == before


# ---- 4. remote code only when the command asks ---------------------------------------------------------------------
CUSTOM_CONFIG = '''import os
from transformers import LlamaConfig


class ClmTestConfig(LlamaConfig):
    model_type = "clmtest"

    def __init__(self, **kwargs):
        marker = os.environ.get("CLM_REMOTE_CODE_MARKER")
        if marker:
            with open(marker, "a") as handle:
                handle.write("remote code ran\\n")
        super().__init__(**kwargs)
'''
CUSTOM_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_clmtest import ClmTestConfig


class ClmTestModel(LlamaForCausalLM):
    config_class = ClmTestConfig
'''


def _custom_code_model(folder):
    """A tiny Llama whose config class is custom code that leaves a marker file each time it runs."""
    from continual_lm.models.backbone import load_backbone

    backbone = load_backbone("tiny-random-llama", seed=3)
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="clmtest", architectures=["ClmTestModel"],
                  auto_map={"AutoConfig": "configuration_clmtest.ClmTestConfig",
                            "AutoModelForCausalLM": "modeling_clmtest.ClmTestModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_clmtest.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_clmtest.py").write_text(CUSTOM_MODEL)


def test_a_shared_run_directory_cannot_make_a_command_run_remote_code(tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    model.mkdir()
    _custom_code_model(model)
    marker = tmp_path / "marker"
    monkeypatch.setenv("CLM_REMOTE_CODE_MARKER", str(marker))
    out = tmp_path / "run"
    assert main(tiny_args(out, "--model", str(model), "--lora-targets", "q_proj", "v_proj",
                          "--trust-remote-code")) == 0
    assert marker.exists()  # the model's code ran because that command asked for it
    marker.unlink()
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"prompt": "1 + 2\\nAnswer:"}\n')
    commands = [["predict", str(out), "--input", str(inputs)], ["export", str(out), str(tmp_path / "exported")],
                ["merge", str(out), str(tmp_path / "merged")], ["run", "--resume", str(out), "--no-progress"]]
    for argv in commands:
        assert main(argv) == 2, argv
        assert "--trust-remote-code" in capsys.readouterr().err
        assert not marker.exists(), f"{argv[0]} ran the model's code without --trust-remote-code"
    assert main(["predict", str(out), "--input", str(inputs), "--trust-remote-code"]) == 0
    assert marker.exists()


# ---- 5. the lock file is never followed through a link --------------------------------------------------------------
def test_the_lock_file_is_not_opened_through_a_symlink(tmp_path, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    with pytest.raises(ContinualLMError, match=r"\.lock.*link"):
        RunDir(out).acquire_lock()
    assert victim.read_text() == "precious"
    assert main(tiny_args(out, "--overwrite")) == 2
    assert victim.read_text() == "precious"


# ---- 6. the lock comes before the first write ------------------------------------------------------------------------
def test_two_runs_started_together_on_a_new_directory_do_not_mix(tmp_path, monkeypatch):
    """Run B checks the (still absent) output directory, then, while B loads its model, run A starts and finishes in
    it: B must refuse to write there instead of leaving its config.yaml beside A's results."""
    from continual_lm.models import backbone as backbone_module

    first = tiny_config(tmp_path, tasks=TASKS, max_train_per_task=4, max_test_per_task=2)
    second = tiny_config(tmp_path, tasks=TASKS, max_train_per_task=4, max_test_per_task=2, lr=1e-2)
    original = backbone_module.load_backbone
    started = []

    def load_backbone(*args, **kwargs):
        if not started:
            started.append(True)
            run(first)  # run A, from start to end, while run B is being set up
        return original(*args, **kwargs)

    monkeypatch.setattr(backbone_module, "load_backbone", load_backbone)
    out = tmp_path / "run"
    with pytest.raises(ContinualLMError, match="another"):
        run(second)
    assert started
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == first.lr
    assert json.loads((out / "results.json").read_text())["method"] == "inclora"


# ---- 7. --resume continues the recorded run, or refuses ---------------------------------------------------------------
@pytest.mark.parametrize("extra, named", [(["--epochs", "3"], "--epochs"), (["--lr", "0.01"], "--lr"),
                                          (["--method", "seqlora"], "--method"), (["--lora-r", "4"], "--lora-r"),
                                          (["--batch-size", "8"], "global batch")])
def test_resume_refuses_options_that_change_the_run(unfinished, tmp_path, capsys, extra, named):
    out = copy_of(unfinished, tmp_path)
    before = snapshot(out)
    assert main(["run", "--resume", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and "recorded" in err
    assert snapshot(out) == before


def test_resume_refuses_a_hand_edited_or_truncated_config(unfinished, tmp_path, capsys):
    out = copy_of(unfinished, tmp_path)
    text = (out / "config.yaml").read_text()
    assert "\nlr: 0.005\n" in text
    (out / "config.yaml").write_text(text.replace("\nlr: 0.005\n", "\nlr: 0.05\n"))
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    assert "lr" in capsys.readouterr().err
    for cut in (text.index("\nlr: 0.005") + 1, text.index("\nlr: 0.005") + len("\nlr: 0.0")):  # truncated files
        (out / "config.yaml").write_text(text[:cut])
        assert main(["run", "--resume", str(out), "--no-progress"]) == 2
        assert "config.yaml" in capsys.readouterr().err
    (out / "config.yaml").write_text(text)  # restored: the resume goes through, with runtime options allowed
    assert main(["run", "--resume", str(out), "--no-progress", "--lr", "0.005", "--epochs", "1"]) == 0
    assert json.loads((out / "results.json").read_text())["matrix"][1][1] is not None


def _write_stream(folder, answers: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("alpha", "beta"):
        records = [{"input": f"{name} item {i}", "output": answers[i % 2]} for i in range(6)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "stream.yaml").write_text(yaml.safe_dump({"tasks": [
        {"name": name, "file": f"{name}.jsonl", "test_fraction": 0.34, "labels": "auto"} for name in ("alpha", "beta")]}))


def test_resume_works_from_another_directory_and_refuses_changed_data(tmp_path, monkeypatch, capsys):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    _write_stream(project / "data", "xy")
    _write_stream(elsewhere / "data", "pq")  # another stream under the same relative path
    monkeypatch.chdir(project)
    killed_in_phase_1(tiny_args("out", "--benchmark", "custom", "--stream-file", "data/stream.yaml", tasks=None))
    out = project / "out"
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["stream_file"] == str(project / "data" / "stream.yaml")
    assert recorded["output_dir"] == str(out)
    monkeypatch.chdir(elsewhere)
    first = (project / "data" / "alpha.jsonl").read_text()
    (project / "data" / "alpha.jsonl").write_text(first.replace('"x"', '"y"', 1))
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    assert "alpha" in capsys.readouterr().err
    (project / "data" / "alpha.jsonl").write_text(first)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["tasks"] == ["alpha", "beta"]


# ---- 9. a finished run is reused only for its own configuration ---------------------------------------------------
def test_a_sweep_reuses_only_runs_of_its_own_configuration(finished, tmp_path, capsys):
    parent = tmp_path / "sweep"
    shutil.copytree(finished, parent / "seed3")
    before = snapshot(parent)
    assert main(tiny_args(parent, "--method", "seqlora", "--seeds", "3", "4")) == 2
    err = capsys.readouterr().err
    assert "seed3" in err and "--method" in err
    assert snapshot(parent) == before
    assert main(tiny_args(parent, "--seeds", "3", "4")) == 0  # its own configuration: seed 3 reused, seed 4 run
    assert "seed3: finished earlier, reused" in capsys.readouterr().out
    assert json.loads((parent / "seed4" / "results.json").read_text())["seed"] == 4


def test_repeated_seeds_or_orders_are_refused(tmp_path, capsys):
    assert main(tiny_args(tmp_path / "sweep", "--seeds", "3", "3")) == 2
    assert "--seeds" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_the_demo_reuses_only_runs_of_its_model_and_seed(finished, tmp_path):
    from continual_lm.demo import run_demo

    root = tmp_path / "demo"
    shutil.copytree(finished, root / "inclora")
    before = snapshot(root)
    with pytest.raises(ContinualLMError, match="--fresh"):
        run_demo(output_dir=root, model="tiny-random-llama", methods=["inclora"], seed=5, progress=False)
    assert snapshot(root) == before


# ---- 10. an error leaves nothing behind ------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--model", "tiny-random-lama"], "tiny-random-llama"),
    (["--lora-targets", "qproj"], "qproj"),
    (["--seed", "-5"], "--seed"),
    (["--method", "olora", "--olora-lambda1", "0.1", "0.2", "0.3"], "--olora-lambda1"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--lora-alpha", "inf"], "--lora-alpha"),
    (["--max-grad-norm", "nan"], "--max-grad-norm"),
    (["--replay-fraction", "0.5"], "replay"),  # an option of a method that is not in the run
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(tiny_args(out, *extra)) == 2
    err = capsys.readouterr().err
    assert "continual-lm: error:" in err and message in err
    assert not out.exists()


# ---- 11. clear errors instead of tracebacks ----------------------------------------------------------------------
# (numeric text such as warmup_ratio: '0.1' is read as the number: tests/test_config.py)
@pytest.mark.parametrize("text, message", [("lora: 5\n", "lora"), ("warmup_ratio: 'a tenth'\n", "warmup"),
                                           ("epochs: 1.5\n", "epochs"), ("tasks: sentiment\n", "tasks")])
def test_wrongly_typed_yaml_values_are_clear_errors(tmp_path, capsys, text, message):
    (tmp_path / "run.yaml").write_text(text)
    argv = tiny_args(tmp_path / "run", "--config", str(tmp_path / "run.yaml"), tasks=None if "tasks" in text else TASKS)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "run.yaml" in err
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("mine")
    assert main(tiny_args(target)) == 2
    assert "not a directory" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_a_full_disk_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from continual_lm import io_utils

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io_utils, "atomic_write_bytes", full)
    assert main(tiny_args(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "no space left" in err.lower() and "--resume" in err


@pytest.mark.parametrize("content", ["[]", '{"method": "x"}', '{"method": "x", "tasks": ["a"], "matrix": "oops"}',
                                     '{"method": "x", "tasks": ["a"], "matrix": [[50]], "metrics": []}'])
def test_report_on_a_malformed_results_json_is_a_clear_error(tmp_path, capsys, content):
    (tmp_path / "results.json").write_text(content)
    assert main(["report", str(tmp_path / "results.json")]) == 2
    assert "results.json" in capsys.readouterr().err
    assert not (tmp_path / "comparison").exists()  # refused before anything was written


@pytest.mark.parametrize("name, content", [("state.json", "[]"), ("state.json", '{"phases": {"0": 5}}'),
                                           ("manifest.json", '{"files": 3}'),
                                           ("manifest.json", '{"format": 1, "row": 0, "files": {}}')])
def test_a_malformed_state_or_manifest_is_a_clear_error(unfinished, tmp_path, capsys, name, content):
    out = copy_of(unfinished, tmp_path)
    path = out / name if name == "state.json" else out / "checkpoints" / "phase_00" / name
    path.write_text(content)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    assert name in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_predict_refuses_a_null_prompt_and_says_when_a_run_is_unfinished(finished, unfinished, tmp_path, capsys):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"prompt": null}\n')
    assert main(["predict", str(finished), "--input", str(inputs)]) == 2
    assert "prompt" in capsys.readouterr().err
    inputs.write_text('{"prompt": "1 + 2\\nAnswer:"}\n')
    before = snapshot(unfinished)
    assert main(["predict", str(unfinished), "--input", str(inputs)]) == 2
    assert "unfinished" in capsys.readouterr().err
    assert main(["predict", str(unfinished), "--input", str(inputs), "--allow-unfinished"]) == 0
    assert snapshot(unfinished) == before
