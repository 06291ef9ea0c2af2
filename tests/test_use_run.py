"""Using a finished run: predict through the evaluation path, peft export, merge to a standalone model."""
import json

import pytest
import torch

import continual_lm
from continual_lm.cli import main
from continual_lm.errors import ContinualLMError
from continual_lm import run

from helpers import tiny_config


@pytest.fixture(scope="module")
def inclora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inc")
    results = run(tiny_config(tmp, method="inclora", lr=2e-2))
    return tmp / "run", results


def _final_predictions(run_dir, results):
    last = len(results["tasks"]) - 1
    return json.loads((run_dir / "predictions" / f"after_phase_{last:02d}.json").read_text())


def test_predict_reproduces_the_evaluation_path(inclora_run):
    run_dir, results = inclora_run
    loaded = continual_lm.load_run(run_dir)
    task = loaded.tasks[1]
    examples = _final_predictions(run_dir, results)[task.name]  # input, references, prediction, score of each
    assert [e["score"] for e in examples] and all(0 <= e["score"] <= 100 for e in examples)
    records = [{"input": e["input"], "task": task.name} for e in examples]
    assert loaded.predict(records) == [e["prediction"] for e in examples]
    prompts = [task.prompt(e["input"]) for e in examples]  # full prompts, no task name: same path
    assert loaded.predict(prompts)[0] is not None
    with pytest.raises(ContinualLMError, match="unknown task"):
        loaded.predict([{"input": "x", "task": "nope"}])


def test_predict_cli_writes_jsonl(inclora_run, tmp_path):
    run_dir, _ = inclora_run
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "Add the numbers.\\n1 + 2\\nAnswer:"}\n{"prompt": "What kind of animal?\\na crow\\nAnswer:"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run_dir), "--input", str(src), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all("prediction" in r and "prompt" in r for r in rows)


def _greedy(model, tokenizer, prompts):
    out = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt")["input_ids"]
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def test_peft_export_reproduces_the_run_and_merge_too(inclora_run, tmp_path):
    from peft import PeftModel

    from continual_lm.models.backbone import load_backbone

    run_dir, results = inclora_run
    loaded = continual_lm.load_run(run_dir)
    inputs = _final_predictions(run_dir, results)
    prompts = [t.prompt(inputs[t.name][0]["input"]) for t in loaded.tasks]
    expected = _greedy(loaded.model, loaded.tokenizer, prompts)

    summary = continual_lm.api.export_run(loaded, tmp_path / "exp")
    assert summary["combined"] == "combined" and len(summary["tasks"]) == len(loaded.tasks)
    base = load_backbone("tiny-random-llama", seed=3).model
    assert _greedy(base, loaded.tokenizer, prompts) != expected  # the LoRAs matter, so equality below means something
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "exp" / "combined")).eval()
    assert _greedy(peft_model, loaded.tokenizer, prompts) == expected
    one = load_backbone("tiny-random-llama", seed=3).model
    PeftModel.from_pretrained(one, str(tmp_path / "exp" / summary["tasks"][0]))  # each task loads on its own

    assert main(["merge", str(run_dir), str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    assert _greedy(merged, loaded.tokenizer, prompts) == expected
    with pytest.raises(ContinualLMError, match="already exists"):
        continual_lm.api.merge_run(loaded, tmp_path / "merged")


@pytest.mark.parametrize("method", ["l2p", "progprompt", "epi", "lfpt5", "sapt-prompt"])
def test_merge_and_export_refuse_methods_whose_learning_is_not_in_the_weights(tmp_path, method):
    """Soft-prompt methods feed their learned prompts through their own forward: a merged folder would be the
    untouched base model. Both commands refuse, and export does not send the user to merge."""
    from continual_lm.api import LoadedRun, export_run, merge_run
    from continual_lm.train.assemble import build_runner

    config = tiny_config(tmp_path, method=method, tasks=["sentiment", "number_sign"])
    runner = build_runner(config, tmp_path / "run")
    runner.method.before_task(runner.model, 0, runner.tasks[0])
    runner._mark_trainable()
    with torch.no_grad():
        for value in runner.trainable_state().values():
            value.add_(0.5)  # as if trained
    loaded = LoadedRun(tmp_path / "run", runner)
    with pytest.raises(ContinualLMError, match="cannot be merged"):
        merge_run(loaded, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    with pytest.raises(ContinualLMError) as refused:
        export_run(loaded, tmp_path / "exported")
    assert "continual-lm merge" not in str(refused.value) and "predict" in str(refused.value)
    assert not (tmp_path / "exported").exists()


@pytest.fixture(scope="module")
def amlora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aml")
    results = run(tiny_config(tmp, method="amlora", lr=2e-2, tasks=["sentiment", "reverse"], max_train_per_task=4))
    return tmp / "run", results


def test_own_format_export_loads_with_load_run_and_gives_the_same_outputs(amlora_run, tmp_path):
    """The export of an input-dependent mixture said "load with continual_lm.load_run", which failed on the export
    folder. It now holds what load_run needs (trained parameters, configuration, the tasks' definitions) and loads
    anywhere, without the run directory or the training data."""
    import shutil

    run_dir, results = amlora_run
    loaded = continual_lm.load_run(run_dir)
    summary = continual_lm.api.export_run(loaded, tmp_path / "exp")
    assert summary["own_format"] == "banks.safetensors" and "load_run" in summary["note"]
    moved = tmp_path / "elsewhere" / "exp"
    shutil.copytree(tmp_path / "exp", moved)  # a copy on another machine: the run directory is not needed
    shutil.rmtree(tmp_path / "exp")
    exported = continual_lm.load_run(moved)
    config = (moved / "config.yaml").read_text()
    assert str(run_dir) not in config and "data_dir: null" in config  # no paths of this machine
    final = _final_predictions(run_dir, results)  # the run dir keeps no examples: its prediction files hold them
    records = [{"input": e["input"], "task": name} for name in results["tasks"] for e in final[name]]
    assert records and exported.predict(records) == loaded.predict(records) == [
        e["prediction"] for name in results["tasks"] for e in final[name]]
    ours, theirs = dict(loaded.model.named_parameters()), dict(exported.model.named_parameters())
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
    ids = loaded.tokenizer([records[0]["input"]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, exported.model(input_ids=ids).logits)
    with pytest.raises(ContinualLMError, match="unknown task"):
        exported.predict([{"input": "x", "task": "nope"}])


def test_peft_export_is_not_mistaken_for_an_own_format_export(inclora_run, tmp_path):
    run_dir, _ = inclora_run
    continual_lm.api.export_run(continual_lm.load_run(run_dir), tmp_path / "exp")
    with pytest.raises(ContinualLMError, match="peft adapters.*combined"):
        continual_lm.load_run(tmp_path / "exp")


def test_exports_are_hub_ready(inclora_run, tmp_path, monkeypatch):
    """adapter_config names the real base model; README.md is a model card with front matter, stream, method,
    metrics table and how to load; --push-to-hub creates the repository and uploads the folder (HfApi mocked: no
    network)."""
    import yaml
    from huggingface_hub import HfApi

    from continual_lm.models.backbone import hub_id

    assert hub_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert hub_id("tiny-random-llama") is None and hub_id(str(tmp_path)) is None

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))
        return "https://huggingface.co/me/inclora-demo/commit/abc"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    run_dir, results = inclora_run
    out = tmp_path / "exp"
    assert main(["export", str(run_dir), str(out), "--push-to-hub", "me/inclora-demo", "--private"]) == 0
    assert calls[0] == ("create", "me/inclora-demo", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[1][:2] == ("upload", "me/inclora-demo") and "README.md" in calls[1][2] and "combined" in calls[1][2]

    config = json.loads((out / "combined" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-random-llama"  # no hub id: the model as the run gave it
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "peft" and "continual-learning" in front["tags"] and "inclora" in front["tags"]
    assert "base_model" not in front  # the tiny test model has no hub id; the card says how to load it instead
    assert "load_backbone('tiny-random-llama')" in card
    metrics = results["metrics"]
    assert "| " + " | ".join("–" if metrics[m] is None else f"{metrics[m]:.2f}"
                             for m in ("AP", "F.Ra", "FWT", "BWT")) + " |" in card
    for k, task in enumerate(results["tasks"]):
        assert f"| {k + 1} | {task} | {results['metric_per_task'][task]} | {results['matrix'][-1][k]:.2f} |" in card
    assert 'PeftModel.from_pretrained(base, "REPO_OR_FOLDER", subfolder="combined")' in card
    assert "**inclora**" in card and "## Stream" in card


def test_adapter_config_and_card_name_the_hub_model_of_an_alias(inclora_run, tmp_path, monkeypatch):
    """smollm2-135m is exported as HuggingFaceTB/SmolLM2-135M-Instruct, with the note that our weights are its
    dequantised GGUF (checked on the tiny run, told it used the alias: no 135M model is loaded)."""
    import yaml

    run_dir, _ = inclora_run
    loaded = continual_lm.load_run(run_dir)
    monkeypatch.setattr(loaded.runner.config, "model", "smollm2-135m")
    continual_lm.api.export_run(loaded, tmp_path / "exp")
    config = json.loads((tmp_path / "exp" / "task_00_sentiment" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (tmp_path / "exp" / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "dequantised" in card


@pytest.mark.parametrize("method", ["sapt-lora", "moelora", "gainlora"])
def test_other_input_dependent_mixtures_export_and_load_alike(tmp_path, method):
    options = {"sapt-lora": {"sapt-lora": {"generator_epochs": 1}}}.get(method, {})  # a short pseudo-input generator
    results = run(tiny_config(tmp_path, method=method, tasks=["sentiment", "reverse"], max_train_per_task=4,
                    max_test_per_task=2, method_options=options))
    loaded = continual_lm.load_run(tmp_path / "run")
    assert continual_lm.api.export_run(loaded, tmp_path / "exp")["own_format"] == "banks.safetensors"
    exported = continual_lm.load_run(tmp_path / "exp")
    ours, theirs = dict(loaded.model.named_parameters()), dict(exported.model.named_parameters())
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
    final = _final_predictions(tmp_path / "run", results)
    records = [{"input": e["input"], "task": name} for name in results["tasks"] for e in final[name]]
    assert records and exported.predict(records) == loaded.predict(records)


def test_results_record_the_cost_and_the_configuration(inclora_run):
    """results.json "parameters" (the report's cost columns) equal a count by hand; "config" is the identity run.json
    recorded (what the report groups runs by)."""
    from continual_lm.models.inject import find_lora_banks

    run_dir, results = inclora_run
    banks = find_lora_banks(continual_lm.load_run(run_dir).model)
    one_lora = sum(b.lora_A[0].numel() + b.lora_B[0].numel() for b in banks.values())
    T = len(results["tasks"])
    assert results["parameters"]["trainable"] == one_lora  # inclora trains one new LoRA per task
    assert results["parameters"]["stored"] == T * one_lora  # and keeps every one
    assert results["parameters"]["stored_per_task"] == one_lora
    assert results["config"] == json.loads((run_dir / "run.json").read_text())["config"]
    assert results["config"]["lr"] == 2e-2 and "seed" in results["config"]


def test_a_failed_push_is_a_clear_error_and_keeps_the_export(tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from continual_lm.hub import push_to_hub

    def refuse(self, repo_id, **kw):
        import httpx

        request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
        raise HfHubHTTPError("401 Client Error: Unauthorized", response=httpx.Response(401, request=request))

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    (tmp_path / "README.md").write_text("card")
    with pytest.raises(ContinualLMError, match="--push-to-hub me/x: 401.*export itself is complete"):
        push_to_hub(tmp_path, "me/x")
    assert (tmp_path / "README.md").read_text() == "card"


def test_private_without_push_to_hub_is_refused_before_anything_is_written(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no-run"), str(tmp_path / "exp"), "--private"]) == 2
    assert "--private" in capsys.readouterr().err and not (tmp_path / "exp").exists()
