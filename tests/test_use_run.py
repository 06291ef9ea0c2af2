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
