"""General-ability forgetting through lm-evaluation-harness: a local multiple-choice lm-eval task (YAML over a JSON
file written here), scored on a tiny model before/after fine-tuning, inside a run, and by `analyze general`."""
import importlib.util
import json
import random
import sys

import pytest
import torch

from continual_lm.cli import build_parser, config_from_args
from continual_lm.errors import ContinualLMError
from continual_lm.eval.general import check_usable, task_manager

from helpers import tiny_config

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is not installed: pip install 'continual-lm[general]'")

COLOURS = ["red", "blue", "green", "pink"]  # distinct first two letters: the question's cue decides the answer


def write_colour_task(folder):
    """An lm-eval task `colour_mc`: 'Colour re?' -> one of four colours; a model that ignores the question scores
    exactly 25 (each colour is the answer of a quarter of the questions)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for i in range(8):
        correct = COLOURS[i % 4]
        choices = rng.sample(COLOURS, len(COLOURS))
        rows.append({"question": f"Colour {correct[:2]}?", "choices": choices, "label": choices.index(correct)})
    (folder / "colour.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "colour_mc.yaml").write_text(f"""task: colour_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'colour.jsonl'}
  cache_dir: {folder / 'hf_cache'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return rows


@needs_lm_eval
def test_fine_tuning_on_the_local_task_raises_its_lm_eval_score(tmp_path):
    from continual_lm.eval.general import evaluate_general
    from continual_lm.models.backbone import load_backbone

    rows = write_colour_task(tmp_path / "tasks")
    backbone = load_backbone("tiny-random-llama", seed=0)
    model, tokenizer = backbone.model, backbone.tokenizer
    before = evaluate_general(model, tokenizer, ["colour_mc"], task_dir=tmp_path / "tasks")

    texts = sorted({f"{r['question']} {r['choices'][r['label']]}" for r in rows})  # plain LM training on answers
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = evaluate_general(model, tokenizer, ["colour_mc"], task_dir=tmp_path / "tasks")

    assert set(before) == set(after) == {"colour_mc"}
    assert before["colour_mc"] <= 50.0
    assert after["colour_mc"] >= 87.5 and after["colour_mc"] > before["colour_mc"] + 25.0


@needs_lm_eval
def test_a_run_measures_the_base_model_before_and_the_final_model_after(tmp_path, monkeypatch):
    from continual_lm.analysis.general import measure_general
    from continual_lm.eval import general
    from continual_lm.eval.general import evaluate_general
    from continual_lm.models.backbone import load_backbone
    from continual_lm import run

    write_colour_task(tmp_path / "tasks")
    config = tiny_config(tmp_path, method="seqlora", general_tasks=["colour_mc"],
                         general_task_dir=str(tmp_path / "tasks"), general_limit=6)
    results = run(config)
    out = tmp_path / "run"

    general_key = json.loads((out / "results.json").read_text())["general"]
    assert general_key == results["general"]
    assert general_key["tasks"] == ["colour_mc"] and general_key["metric"] == "acc"
    assert set(general_key["before"]) == set(general_key["after"]) == {"colour_mc"}
    assert json.loads((out / "state.json").read_text())["sections"]["general"] == general_key  # kept for resume
    assert "## General abilities" in (out / "report.md").read_text()

    # "before" is the base model (the LoRAs start at zero); general_limit caps the examples (6 of 8: k/6 scores)
    base = load_backbone("tiny-random-llama", seed=3)
    assert general_key["before"] == evaluate_general(base.model, base.tokenizer, ["colour_mc"],
                                                     task_dir=tmp_path / "tasks", limit=6)
    assert round(general_key["after"]["colour_mc"] * 6 / 100, 4) % 1 == 0

    # the analysis on the finished run rebuilds the same final model and gets the same score
    assert measure_general(out, base=False)["after"] == general_key["after"]

    # a resumed (finished) run does not measure again
    def fail(*args, **kwargs):
        raise AssertionError("general abilities measured again on resume")

    monkeypatch.setattr(general, "evaluate_general", fail)
    assert run(config, output_dir=out, resume=True)["general"] == general_key


def test_general_options_from_the_command_line():
    args = build_parser().parse_args(["run", "--general-tasks", "hellaswag", "arc_challenge",
                                      "--general-task-dir", "my_tasks", "--general-limit", "50"])
    config = config_from_args(args)
    assert config.general_tasks == ["hellaswag", "arc_challenge"]
    assert config.general_task_dir == "my_tasks" and config.general_limit == 50
    with pytest.raises(ContinualLMError, match="--general-limit"):
        config_from_args(build_parser().parse_args(["run", "--general-limit", "0"]))


def test_methods_whose_evaluation_bypasses_the_model_are_refused(tmp_path):
    from continual_lm.methods.base import Method, build_method

    with pytest.raises(ContinualLMError, match="task id at test time"):
        check_usable(build_method(tiny_config(tmp_path, method="single")))

    class OwnForward(Method):
        name = "own-forward"

        def forward(self, model, batch):
            return model(**batch)

    with pytest.raises(ContinualLMError, match="its own forward/generate"):
        check_usable(OwnForward(tiny_config(tmp_path)))
    for spec in ("seqlora", "inclora+migu", "amlora"):
        check_usable(build_method(tiny_config(tmp_path, method=spec)))  # LoRA banks live in the model


def test_a_missing_lm_eval_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(ContinualLMError, match=r"pip install 'continual-lm\[general\]'"):
        task_manager(["colour_mc"])
