"""Readers for task data on disk: JSON/JSONL records, the O-LoRA ``CL_Benchmark`` layout, SuperNI task files, the
TRACE benchmark's ``{prompt, answer}`` files and user-defined streams (YAML). Every problem with a user's files is
reported as a :class:`ContinualLMError` that names the file, the record/field and what was expected."""
from __future__ import annotations

import hashlib
import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual_lm.data.tasks import (
    ACCURACY,
    AUTO,
    CLASSIFICATION,
    CODE_LITERALS,
    CORPUS,
    CUT_END,
    CUT_START,
    DEFAULT_TEMPLATE,
    EDIT_SIM,
    EXTRACTS,
    GENERATION,
    LETTER,
    ROUGE_L,
    SARI,
    SUPERNI_TEMPLATE,
    TRUNCATE_SIDES,
    WHOLE,
    AnswerRule,
    Example,
    Task,
)
from continual_lm.errors import ContinualLMError, unknown_choice

# Zero-shot instructions per CL_Benchmark family, verbatim from O-LoRA's CL_Benchmark_configs/instruction_config.json
# (MIT). Used when the data directory has no CL_Benchmark_configs/instruction_config.json.
CLBENCHMARK_INSTRUCTIONS: dict[str, str] = {
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? Choose one from the option.\n',
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? Choose one from the option.\n',
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.\n",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? Choose one from the option.\n",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? Choose one from the option.\n",
}

# Families whose prompt has neither instruction nor options in O-LoRA's loader (load_COPA_dataset builds
# sentence + "\nAnswer:", the sentence itself says "Choose one between A and B."): family -> template.
CLBENCHMARK_BARE_FAMILIES: dict[str, str] = {"COPA": "{instruction}{input}\nAnswer:"}

# Task names used by SAPT for two CL_Benchmark folders (lower-case alias -> lower-case folder name).
CLBENCHMARK_ALIASES: dict[str, str] = {"sst2": "sst-2", "boolq": "boolqa"}

# MNLI's marker for "no gold label" (annotators disagreed). Records carrying it cannot be scored and are skipped
# when the marker is not itself one of the task's labels.
NO_GOLD_LABEL = "-"

# SuperNI tasks scored by accuracy (classification); every other SuperNI task is generation scored by Rouge-L.
SUPERNI_CLASSIFICATION_TASKS = frozenset(
    {"task363_sst2_polarity_classification", "task875_emotion_classification", "task1687_sentiment140_classification"}
)


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed derived from ``parts`` that is the same in every process (unlike Python's ``hash``)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


# ----------------------------------------------------------------------------------------------------------------
# JSON / JSONL records


def _read_text(path: Path, what: str = "file") -> str:
    if not path.exists():
        raise ContinualLMError(f"{what} not found: {path}")
    if not path.is_file():
        raise ContinualLMError(f"{what} {path} is not a file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ContinualLMError(f"{path}: not UTF-8 text ({e}); expected a UTF-8 JSON or JSONL file") from None
    except OSError as e:
        raise ContinualLMError(f"cannot read {path}: {e}") from None


def _load_json(path: Path, what: str = "file") -> Any:
    """Parse a whole JSON document; errors name the file, line and column."""
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ContinualLMError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}"
        ) from None


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def read_records(path: str | Path) -> list[dict]:
    """Read a JSON list of objects, or JSONL (one object per line, blank lines skipped)."""
    path = Path(path)
    text = _read_text(path, "data file")
    stripped = text.strip()
    if not stripped:
        return []
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ContinualLMError(
                f"{path}: invalid JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}; "
                "expected a JSON list of objects or JSONL (one object per line)"
            ) from None
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise ContinualLMError(
                    f"{path}: record {i} is a {_type_name(rec)}, expected a JSON object like "
                    '{"input": ..., "output": ...}'
                )
        return data
    records: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            try:  # a pretty-printed single object is not JSONL: say so instead of blaming line 1
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None
            if isinstance(whole, dict):
                raise ContinualLMError(
                    f"{path}: the file is a single JSON object; expected a JSON list of objects or JSONL "
                    "(one object per line)"
                ) from None
            raise ContinualLMError(
                f"{path}, line {lineno}: invalid JSON (column {e.colno}): {e.msg}; expected one JSON object per "
                "line (JSONL) or a JSON list of objects"
            ) from None
        if not isinstance(rec, dict):
            raise ContinualLMError(
                f"{path}, line {lineno}: record {len(records)} is a {_type_name(rec)}, expected a JSON object"
            )
        records.append(rec)
    return records


# ----------------------------------------------------------------------------------------------------------------
# CL_Benchmark (O-LoRA layout): Standard CL and Long Sequence benchmarks


def clbenchmark_task_dirs(data_dir: Path) -> dict[str, tuple[str, Path]]:
    """Lower-case task name -> (family, task folder) for every ``data_dir/CL_Benchmark/<family>/<task>`` folder."""
    root = Path(data_dir) / "CL_Benchmark"
    if not root.is_dir():
        raise ContinualLMError(
            f"CL_Benchmark data not found: {root} is not a directory; expected the O-LoRA layout "
            "<data-dir>/CL_Benchmark/<family>/<task>/{train,test,labels}.json (pass --data-dir or set "
            "CONTINUAL_LM_DATA to the folder that contains CL_Benchmark/)"
        )
    found: dict[str, tuple[str, Path]] = {}
    for family_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for task_dir in sorted(p for p in family_dir.iterdir() if p.is_dir()):
            key = task_dir.name.lower()
            if key in found:
                raise ContinualLMError(
                    f"CL_Benchmark task name {key!r} is ambiguous: both {found[key][1]} and {task_dir} exist "
                    "(task names are matched case-insensitively); rename one of them"
                )
            found[key] = (family_dir.name, task_dir)
    return found


def _clbenchmark_instruction(data_dir: Path, family: str) -> str:
    config = Path(data_dir) / "CL_Benchmark_configs" / "instruction_config.json"
    if config.exists():
        data = _load_json(config, "instruction config")
        if not isinstance(data, dict):
            raise ContinualLMError(
                f"{config}: expected a JSON object {{family: [{{\"instruction\": ...}}]}}, got a {_type_name(data)}"
            )
        if family in data:
            entries = data[family]
            if (
                not isinstance(entries, list)
                or not entries
                or not isinstance(entries[0], dict)
                or not isinstance(entries[0].get("instruction"), str)
            ):
                raise ContinualLMError(
                    f"{config}: family {family!r} must be a non-empty list of objects with a string "
                    "\"instruction\" field"
                )
            return entries[0]["instruction"]
    if family in CLBENCHMARK_INSTRUCTIONS:
        return CLBENCHMARK_INSTRUCTIONS[family]
    if family in CLBENCHMARK_BARE_FAMILIES:
        return ""
    where = f"in {config}" if config.exists() else f"({config} does not exist)"
    raise ContinualLMError(
        f"no instruction for CL_Benchmark family {family!r} {where}; expected an entry "
        f'"{family}": [{{"instruction": "..."}}] in {config} (built-in families: '
        f"{', '.join(sorted(CLBENCHMARK_INSTRUCTIONS))})"
    )


def _clbenchmark_split(path: Path, labels: list[str]) -> tuple[list[Example], int]:
    """Examples of one split and the number of records skipped for carrying MNLI's no-gold-label marker."""
    records = read_records(path)
    if not records:
        raise ContinualLMError(f"{path}: the split is empty; expected a JSON list of {{\"label\", \"sentence\"}} records")
    allowed = set(labels)
    examples: list[Example] = []
    skipped = 0
    for i, rec in enumerate(records):
        for key in ("label", "sentence"):
            if key not in rec:
                raise ContinualLMError(f"{path}: record {i} has no {key!r} field; expected {{\"label\", \"sentence\"}}")
            if not isinstance(rec[key], str):
                raise ContinualLMError(
                    f"{path}: record {i} field {key!r} is a {_type_name(rec[key])}, expected a string"
                )
        label = rec["label"]
        if label not in allowed:
            if label == NO_GOLD_LABEL:
                skipped += 1
                continue
            raise ContinualLMError(
                f"{path}: record {i} has label {label!r}, which is not in labels.json; allowed labels: "
                f"{', '.join(repr(x) for x in labels)}"
            )
        examples.append(Example(input=rec["sentence"], target=label))
    if not examples:
        raise ContinualLMError(f"{path}: no usable records (all carry the no-gold-label marker {NO_GOLD_LABEL!r})")
    return examples, skipped


def read_clbenchmark_task(data_dir: str | Path, name: str) -> Task:
    """Read one task of the O-LoRA ``CL_Benchmark`` layout (case-insensitive name; ``sst2``/``boolq`` accepted)."""
    data_dir = Path(data_dir)
    dirs = clbenchmark_task_dirs(data_dir)
    key = str(name).lower()
    key = CLBENCHMARK_ALIASES.get(key, key)
    if key not in dirs:
        err = unknown_choice("CL_Benchmark task", name, dirs)
        raise ContinualLMError(f"{err} (looked for a task folder under {data_dir / 'CL_Benchmark'}/*/)")
    family, task_dir = dirs[key]
    labels_path = task_dir / "labels.json"
    labels = _load_json(labels_path, "labels file")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ContinualLMError(f"{labels_path}: expected a non-empty JSON list of label strings")
    if len(set(labels)) != len(labels):
        raise ContinualLMError(f"{labels_path}: labels must be unique, got {labels}")
    train, skipped_train = _clbenchmark_split(task_dir / "train.json", labels)
    test, skipped_test = _clbenchmark_split(task_dir / "test.json", labels)
    extra: dict[str, Any] = {"family": family}
    if skipped_train or skipped_test:
        extra["skipped_no_gold_label"] = {"train": skipped_train, "test": skipped_test}
    return Task(
        name=key,
        kind=CLASSIFICATION,
        metric=ACCURACY,
        instruction=_clbenchmark_instruction(data_dir, family),
        train=train,
        test=test,
        labels=list(labels),
        template=CLBENCHMARK_BARE_FAMILIES.get(family, DEFAULT_TEMPLATE),
        source=str(task_dir),
        extra=extra,
    )


# ----------------------------------------------------------------------------------------------------------------
# SuperNI (Super-NaturalInstructions task files, SAPT selection)


def superni_task_dirs(data_dir: Path) -> dict[str, Path]:
    root = Path(data_dir) / "SuperNI"
    if not root.is_dir():
        raise ContinualLMError(
            f"SuperNI data not found: {root} is not a directory; expected <data-dir>/SuperNI/<task>/{{train,test}}.json "
            "(pass --data-dir or set CONTINUAL_LM_DATA to the folder that contains SuperNI/)"
        )
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()}


def _superni_split(path: Path) -> tuple[str, list[Example]]:
    data = _load_json(path, "SuperNI task file")
    if not isinstance(data, dict):
        raise ContinualLMError(f"{path}: expected a Super-NaturalInstructions task object, got a {_type_name(data)}")
    for key in ("Definition", "Instances"):
        if key not in data:
            raise ContinualLMError(f"{path}: missing field {key!r}; expected a Super-NaturalInstructions task file")
    definition = data["Definition"]
    if isinstance(definition, list) and all(isinstance(x, str) for x in definition):
        definition = " ".join(definition)
    elif not isinstance(definition, str):
        raise ContinualLMError(f"{path}: field 'Definition' must be a string or a list of strings")
    instances = data["Instances"]
    if not isinstance(instances, list):
        raise ContinualLMError(f"{path}: field 'Instances' must be a list of {{id, input, output}} objects")
    if not instances:
        raise ContinualLMError(f"{path}: field 'Instances' is empty; expected at least one instance")
    examples = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise ContinualLMError(f"{path}: Instances[{i}] is a {_type_name(inst)}, expected an object")
        for key in ("input", "output"):
            if key not in inst:
                raise ContinualLMError(f"{path}: Instances[{i}] has no {key!r} field")
        if not isinstance(inst["input"], str):
            raise ContinualLMError(f"{path}: Instances[{i}] field 'input' must be a string")
        output = inst["output"]
        refs = [output] if isinstance(output, str) else output
        if not isinstance(refs, list) or not refs or not all(isinstance(x, str) for x in refs):
            raise ContinualLMError(
                f"{path}: Instances[{i}] field 'output' must be a string or a non-empty list of strings"
            )
        examples.append(Example(input=inst["input"], target=refs[0], references=tuple(refs)))
    return definition, examples


def read_superni_task(data_dir: str | Path, name: str) -> Task:
    """Read ``data_dir/SuperNI/<name>/{train,test}.json`` (name matched case-insensitively)."""
    data_dir = Path(data_dir)
    dirs = superni_task_dirs(data_dir)
    by_lower = {k.lower(): k for k in dirs}
    key = by_lower.get(str(name).lower())
    if key is None:
        err = unknown_choice("SuperNI task", name, dirs)
        raise ContinualLMError(f"{err} (looked for a task folder under {data_dir / 'SuperNI'}/)")
    task_dir = dirs[key]
    definition, train = _superni_split(task_dir / "train.json")
    _, test = _superni_split(task_dir / "test.json")
    if key in SUPERNI_CLASSIFICATION_TASKS:
        kind, metric, labels = CLASSIFICATION, ACCURACY, sorted({ex.target for ex in train})
    else:
        kind, metric, labels = GENERATION, ROUGE_L, None
    return Task(
        name=key,
        kind=kind,
        metric=metric,
        instruction=definition,
        train=train,
        test=test,
        labels=labels,
        template=SUPERNI_TEMPLATE,
        source=str(task_dir),
        extra={"family": "SuperNI"},
    )


# ----------------------------------------------------------------------------------------------------------------
# TRACE (8 tasks, LLM-CL-Benchmark release: <task>/{train,eval,test}.json of {"prompt", "answer"})


@dataclass(frozen=True)
class TraceTask:
    metric: str
    extract: str = WHOLE
    truncate: str = CUT_END
    classification: bool = False  # a closed label set (the distinct training answers)


# The TRACE paper's metric per task, how its evaluation (evaluations/eval_*.py) reads an answer, and which end of an
# over-long input is cut. Every TRACE answer runs to EOS (ScienceQA's letter is followed by its reasoning lines,
# summaries and simplifications span lines), and each task's new-token budget comes from its answers' lengths.
TRACE_TASKS: dict[str, TraceTask] = {
    "C-STANCE": TraceTask(ACCURACY, classification=True),  # Chinese stance: A/B/C
    "FOMC": TraceTask(ACCURACY, classification=True),  # monetary-policy stance: A/B/C
    "MeetingBank": TraceTask(ROUGE_L),  # meeting summarization (the transcript's start is kept)
    "Py150": TraceTask(EDIT_SIM, extract=CODE_LITERALS, truncate=CUT_START),  # the next line of code
    "ScienceQA": TraceTask(ACCURACY, extract=LETTER),  # answer letter, then the reasoning
    "NumGLUE-cm": TraceTask(ACCURACY),  # math: the answer (a number or a word), exact match
    "NumGLUE-ds": TraceTask(ACCURACY),
    "20Minuten": TraceTask(SARI),  # German text simplification
}


def trace_task_dirs(data_dir: Path) -> dict[str, Path]:
    root = Path(data_dir) / "TRACE"
    if not root.is_dir():
        raise ContinualLMError(
            f"TRACE data not found: {root} is not a directory; expected <data-dir>/TRACE/<task>/{{train,test}}.json "
            "(pass --data-dir or set CONTINUAL_LM_DATA to the folder that contains TRACE/)"
        )
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()}


def _trace_split(path: Path) -> list[tuple[str, str]]:
    records = read_records(path)
    if not records:
        raise ContinualLMError(f"{path}: the split is empty; expected a JSON list of "
                               f"{{\"prompt\", \"answer\"}} records")
    pairs = []
    for i, rec in enumerate(records):
        for key in ("prompt", "answer"):
            if not isinstance(rec.get(key), str):
                found = "no such field" if key not in rec else f"a {_type_name(rec[key])}"
                raise ContinualLMError(f"{path}: record {i} field {key!r} ({found}); expected "
                                       f"{{\"prompt\": str, \"answer\": str}}")
        pairs.append((rec["prompt"], rec["answer"].strip()))
    return pairs


def _common_frame(prompts: list[str]) -> tuple[str, str]:
    """The instruction every prompt starts with (up to and including a line break) and the answer cue every prompt
    ends with (from a line break on): the parts that truncation must keep."""
    first, last = min(prompts), max(prompts)  # the common prefix of all strings is that of the extreme two
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    prefix = first[:first.rfind("\n", 0, n) + 1]
    reversed_prompts = [p[::-1] for p in prompts]
    first, last = min(reversed_prompts), max(reversed_prompts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    cut = first.rfind("\n", 0, n)
    suffix = first[:cut + 1][::-1] if cut >= 0 else ""
    if len(prefix) + len(suffix) > min(len(p) for p in prompts):  # they would overlap in the shortest prompt
        suffix = ""
    return prefix, suffix


def read_trace_task(data_dir: str | Path, name: str) -> Task:
    """Read ``data_dir/TRACE/<name>/{train,test}.json`` (name matched case-insensitively; ``eval.json`` is not
    used). The prompts already hold the task's instruction: it and the final cue ("Answer:", "Summary:", ...) become
    the task's instruction and template, the rest is the example's input, so that ``Task.prompt`` gives the
    released prompt back exactly and truncation cuts only the input."""
    data_dir = Path(data_dir)
    dirs = trace_task_dirs(data_dir)
    by_lower = {k.lower(): k for k in dirs}
    key = by_lower.get(str(name).lower())
    if key is None or key not in TRACE_TASKS:
        err = unknown_choice("TRACE task", name, [k for k in TRACE_TASKS if k in dirs] or TRACE_TASKS)
        raise ContinualLMError(f"{err} (looked for a task folder under {data_dir / 'TRACE'}/)")
    spec, task_dir = TRACE_TASKS[key], dirs[key]
    train, test = _trace_split(task_dir / "train.json"), _trace_split(task_dir / "test.json")
    prefix, suffix = _common_frame([p for p, _ in train + test])

    def examples(pairs):
        return [Example(input=p[len(prefix):len(p) - len(suffix)], target=a) for p, a in pairs]

    train_examples = examples(train)
    return Task(
        name=key,
        kind=CLASSIFICATION if spec.classification else GENERATION,
        metric=spec.metric,
        instruction=prefix,
        train=train_examples,
        test=examples(test),
        labels=sorted({e.target for e in train_examples}) if spec.classification else None,
        template="{instruction}{input}" + suffix.replace("{", "{{").replace("}", "}}"),
        source=str(task_dir),
        extra={"family": "TRACE"},
        answer=AnswerRule(stop=(), extract=spec.extract, max_new_tokens=AUTO),
        truncate=spec.truncate,
    )


# ----------------------------------------------------------------------------------------------------------------
# User-defined streams (YAML)

_STREAM_KEYS = {"tasks"}
_TASK_KEYS = {
    "name", "train", "test", "file", "test_fraction", "input_field", "output_field", "metric", "instruction",
    "labels", "template", "stop", "extract", "max_new_tokens", "truncate",
}
_CORPUS_TASK_KEYS = {"name", "corpus", "text_field", "end_task"}
_END_TASK_KEYS = {"train", "test", "input_field", "output_field", "labels", "epochs", "lr", "batch_size", "train_body"}
_TEMPLATE_FIELDS = {"instruction", "options", "input"}
_TASK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_METRICS = {"accuracy": ACCURACY, "rougel": ROUGE_L, "editsim": EDIT_SIM, "sari": SARI}
_STOP_WORDS = {"line": ("\n",), "eos": ()}


def _check_template(where: str, template: Any) -> str:
    if not isinstance(template, str):
        raise ContinualLMError(f"{where}: 'template' must be a string with the placeholders {{instruction}} {{options}} {{input}}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ContinualLMError(f"{where}: 'template' is not a valid format string ({e}); write literal braces as {{{{ }}}}") from None
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        raise ContinualLMError(
            f"{where}: 'template' uses unknown placeholder(s) {', '.join('{' + f + '}' for f in sorted(unknown))}; "
            "allowed: {instruction} {options} {input}"
        )
    if "input" not in fields:
        raise ContinualLMError(f"{where}: 'template' must contain the {{input}} placeholder")
    return template


def _answer_rule(where: str, spec: dict) -> tuple[AnswerRule, str]:
    """The answer rule and truncation side of a custom task from its optional keys ``stop``, ``extract``,
    ``max_new_tokens`` and ``truncate`` (docs/benchmarks.md, "Answers")."""
    stop = spec.get("stop", "line")
    if isinstance(stop, str) and stop in _STOP_WORDS:
        stop = _STOP_WORDS[stop]
    elif isinstance(stop, str) and stop:
        stop = (stop,)
    elif isinstance(stop, list) and stop and all(isinstance(x, str) and x for x in stop):
        stop = tuple(stop)
    else:
        raise ContinualLMError(f"{where}: 'stop' must be 'line' (the first line, the default), 'eos' (the whole "
                               f"generation) or a non-empty string or list of strings that end the answer, "
                               f"got {stop!r}")
    extract = spec.get("extract", WHOLE)
    if extract not in EXTRACTS:
        err = unknown_choice("extract", extract, EXTRACTS)
        raise ContinualLMError(f"{where}: {err}")
    budget = spec.get("max_new_tokens")
    if budget is not None and budget != AUTO and (isinstance(budget, bool) or not isinstance(budget, int)
                                                  or budget < 1):
        raise ContinualLMError(f"{where}: 'max_new_tokens' must be a positive integer or 'auto' (from the lengths of "
                               f"the task's training answers), got {budget!r}")
    truncate = spec.get("truncate", CUT_END)
    if truncate not in TRUNCATE_SIDES:
        raise ContinualLMError(f"{where}: 'truncate' must be 'end' (cut an over-long input's end, the default) or "
                               f"'start' (cut its start, keep its end), got {truncate!r}")
    return AnswerRule(stop=stop, extract=extract, max_new_tokens=budget), truncate


def _value_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _custom_examples(where: str, path: str | Path, records: list[dict], input_field: str,
                     output_field: str) -> list[Example]:
    examples = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ContinualLMError(f"{where}: {path}: record {i} is a {_type_name(rec)}, expected a mapping with the "
                                   f"fields {input_field!r} and {output_field!r}")
        for field_name, role in ((input_field, "input_field"), (output_field, "output_field")):
            if field_name not in rec:
                raise ContinualLMError(
                    f"{where}: {path}: record {i} has no field {field_name!r} (the task's {role}); "
                    f"fields present: {', '.join(sorted(rec)) or 'none'}"
                )
        text = _value_text(rec[input_field])
        if text is None:
            raise ContinualLMError(
                f"{where}: {path}: record {i} field {input_field!r} is a {_type_name(rec[input_field])}, expected a string"
            )
        output = rec[output_field]
        outputs = output if isinstance(output, list) else [output]
        refs = [_value_text(x) for x in outputs]
        if not refs or any(r is None for r in refs):
            raise ContinualLMError(
                f"{where}: {path}: record {i} field {output_field!r} must be a string or a non-empty list of strings"
            )
        examples.append(Example(input=text, target=refs[0], references=tuple(refs) if len(refs) > 1 else ()))
    return examples


def _resolve_file(yaml_path: Path, where: str, key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ContinualLMError(f"{where}: {key!r} must be a file path (relative to {yaml_path.parent})")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = yaml_path.parent / path
    if not path.is_file():
        raise ContinualLMError(f"{where}: {key!r} file not found: {path}")
    return path


def _read_custom_task(yaml_path: Path, index: int, spec: Any) -> Task:
    where = f"{yaml_path}: tasks[{index}]"
    if not isinstance(spec, dict):
        raise ContinualLMError(f"{where}: expected a mapping with at least 'name' and 'train'/'test' (or 'file'), got a {_type_name(spec)}")
    name = spec.get("name")
    if name is None:
        raise ContinualLMError(f"{where}: missing required key 'name'")
    _check_task_name(where, name)
    where = f"{yaml_path}: task {name!r}"
    if "corpus" in spec or "end_task" in spec:
        return _read_corpus_task(yaml_path, where, name, spec)
    unknown = sorted(set(spec) - _TASK_KEYS)
    if unknown:
        raise ContinualLMError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {', '.join(sorted(_TASK_KEYS))}")
    has_split = "train" in spec or "test" in spec
    if "file" in spec and has_split:
        raise ContinualLMError(f"{where}: give either 'train' and 'test', or 'file' (with optional 'test_fraction'), not both")
    if "file" in spec:
        path = _resolve_file(yaml_path, where, "file", spec["file"])
        splits = {"train": (str(path), read_records(path)), "test": None}
    else:
        for key in ("train", "test"):
            if key not in spec:
                raise ContinualLMError(f"{where}: missing required key {key!r} (or give 'file' to split one file)")
        splits = {key: (str(path), read_records(path))
                  for key, path in ((k, _resolve_file(yaml_path, where, k, spec[k])) for k in ("train", "test"))}
    options = {k: v for k, v in spec.items() if k not in ("name", "train", "test", "file")}
    return custom_task(where, name, splits["train"], splits["test"], source=str(yaml_path),
                       extra={"train_file": splits["train"][0], "test_file": (splits["test"] or splits["train"])[0]},
                       **options)


def _check_task_name(where: str, name: Any) -> None:
    if not isinstance(name, str) or not _TASK_NAME_RE.match(name):
        raise ContinualLMError(
            f"{where}: 'name' must be a string of letters, digits, '_', '-' or '.' starting with a letter or digit, got {name!r}"
        )


# The keys of a custom task besides where its records come from (name, train, test, file): the options of
# ``custom_task``, shared by the YAML stream and the Python builders (data/stream.py).
TASK_OPTIONS = frozenset(_TASK_KEYS - {"name", "train", "test", "file"})


def custom_task(where: str, name: str, train: tuple[str, list[dict]], test: tuple[str, list[dict]] | None, *,
                source: str, extra: dict | None = None, **options: Any) -> Task:
    """A task of the user's from its records: ``train`` and ``test`` are (where they come from, records); ``test``
    None splits ``train`` with a seeded shuffle (seed 0) by ``test_fraction`` (default 0.2). ``options`` are the
    keys of a stream YAML's task (docs/benchmarks.md): input_field, output_field, instruction, labels, metric,
    template, stop, extract, max_new_tokens, truncate. Errors name ``where``, the records' origin and the record."""
    _check_task_name(where, name)
    unknown = sorted(set(options) - TASK_OPTIONS)
    if unknown:
        raise ContinualLMError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: "
                               f"{', '.join(sorted(TASK_OPTIONS))}")
    spec = options
    input_field = spec.get("input_field", "input")
    output_field = spec.get("output_field", "output")
    for key, value in (("input_field", input_field), ("output_field", output_field)):
        if not isinstance(value, str) or not value:
            raise ContinualLMError(f"{where}: {key!r} must be a non-empty string (a field name of the records)")

    if test is None:
        fraction = spec.get("test_fraction", 0.2)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ContinualLMError(f"{where}: 'test_fraction' must be a number between 0 and 1 (exclusive), got {fraction!r}")
        train_path = test_path = train[0]
        examples = _custom_examples(where, train_path, train[1], input_field, output_field)
        if len(examples) < 2:
            raise ContinualLMError(f"{where}: {train_path} has {len(examples)} record(s); need at least 2 to split into train and test")
        order = list(range(len(examples)))
        random.Random(0).shuffle(order)
        n_test = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
        test_examples = [examples[i] for i in order[:n_test]]
        train_examples = [examples[i] for i in order[n_test:]]
    else:
        if "test_fraction" in spec:
            raise ContinualLMError(f"{where}: 'test_fraction' is only used with one file (or records) to split")
        (train_path, train_records), (test_path, test_records) = train, test
        train_examples = _custom_examples(where, train_path, train_records, input_field, output_field)
        test_examples = _custom_examples(where, test_path, test_records, input_field, output_field)
    train, test = train_examples, test_examples
    if not train:
        raise ContinualLMError(f"{where}: the train split ({train_path}) has no records")
    if not test:
        raise ContinualLMError(f"{where}: the test split ({test_path}) has no records")

    labels = spec.get("labels")
    if labels == "auto":
        labels = sorted({ex.target for ex in train})
    elif labels is not None:
        if isinstance(labels, list) and any(isinstance(x, bool) for x in labels):
            raise ContinualLMError(
                f"{where}: 'labels' contains booleans ({labels!r}): YAML reads unquoted yes/no/true/false/on/off as "
                "booleans; quote the labels, e.g. labels: [\"yes\", \"no\"]"
            )
        if not isinstance(labels, list) or not labels or any(_value_text(x) is None for x in labels):
            raise ContinualLMError(f"{where}: 'labels' must be a non-empty list of strings or 'auto', got {labels!r}")
        labels = [_value_text(x) for x in labels]
        if len(set(labels)) != len(labels):
            raise ContinualLMError(f"{where}: 'labels' has duplicates: {labels}")
    if labels is not None:
        allowed = set(labels)
        for split_name, path, examples in (("train", train_path, train), ("test", test_path, test)):
            for i, ex in enumerate(examples):
                for ref in ex.refs():
                    if ref not in allowed:
                        raise ContinualLMError(
                            f"{where}: {split_name} record {i} ({path}) has output {ref!r}, which is not one of the "
                            f"labels: {', '.join(map(repr, labels))}"
                        )

    metric_value = spec.get("metric")
    if metric_value is None:
        metric = ACCURACY if labels is not None else ROUGE_L
    else:
        norm = re.sub(r"[\s_\-]", "", str(metric_value)).lower()
        if norm not in _METRICS:
            err = unknown_choice("metric", metric_value, ["accuracy", "rougeL", "edit_sim", "sari"])
            raise ContinualLMError(f"{where}: {err}")
        metric = _METRICS[norm]

    instruction = spec.get("instruction", "")
    if not isinstance(instruction, str):
        raise ContinualLMError(f"{where}: 'instruction' must be a string")
    template = _check_template(where, spec["template"]) if "template" in spec else DEFAULT_TEMPLATE
    answer, truncate = _answer_rule(where, spec)
    return Task(
        name=name,
        kind=CLASSIFICATION if metric == ACCURACY else GENERATION,
        metric=metric,
        instruction=instruction,
        train=train,
        test=test,
        labels=labels,
        template=template,
        source=source,
        extra=dict(extra or {}),
        answer=answer,
        truncate=truncate,
    )


def _read_corpus_documents(where: str, path: Path, text_field: str) -> list[str]:
    """A JSON/JSONL file: the ``text_field`` of each record; any other file: one document per non-empty line."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return [line for line in _read_text(path, "corpus file").splitlines() if line.strip()]
    documents = []
    for i, rec in enumerate(read_records(path)):
        text = rec.get(text_field)
        if not isinstance(text, str):
            found = "no such field" if text_field not in rec else f"a {_type_name(text)}"
            raise ContinualLMError(f"{where}: {path}: record {i} field {text_field!r} ({found}); expected a string "
                                   f"(set 'text_field' to the field that holds the text)")
        if text.strip():
            documents.append(text)
    return documents


def _read_corpus_task(yaml_path: Path, where: str, name: str, spec: dict) -> Task:
    """A continual pre-training task: an unlabelled corpus trained with the LM loss, scored by its end task."""
    unknown = sorted(set(spec) - _CORPUS_TASK_KEYS)
    if unknown:
        raise ContinualLMError(f"{where}: key(s) {', '.join(map(repr, unknown))} do not apply to a corpus task; "
                               f"allowed keys: {', '.join(sorted(_CORPUS_TASK_KEYS))}")
    for key in ("corpus", "end_task"):
        if key not in spec:
            raise ContinualLMError(f"{where}: a corpus task needs both 'corpus' (a text file) and 'end_task' "
                                   f"(its labelled train/test files); {key!r} is missing")
    text_field = spec.get("text_field", "text")
    if not isinstance(text_field, str) or not text_field:
        raise ContinualLMError(f"{where}: 'text_field' must be a non-empty string (a field of the corpus records)")
    corpus_path = _resolve_file(yaml_path, where, "corpus", spec["corpus"])
    documents = _read_corpus_documents(where, corpus_path, text_field)
    if not documents:
        raise ContinualLMError(f"{where}: the corpus {corpus_path} has no text")

    end = spec["end_task"]
    if not isinstance(end, dict):
        raise ContinualLMError(f"{where}: 'end_task' must be a mapping with 'train' and 'test' files, "
                               f"got a {_type_name(end)}")
    unknown = sorted(set(end) - _END_TASK_KEYS)
    if unknown:
        raise ContinualLMError(f"{where}: end_task: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: "
                               f"{', '.join(sorted(_END_TASK_KEYS))}")
    input_field, output_field = end.get("input_field", "input"), end.get("output_field", "output")
    splits = {}
    for split in ("train", "test"):
        if split not in end:
            raise ContinualLMError(f"{where}: end_task: missing required key {split!r}")
        path = _resolve_file(yaml_path, f"{where}: end_task", split, end[split])
        splits[split] = _custom_examples(f"{where}: end_task", path, read_records(path), input_field, output_field)
        if not splits[split]:
            raise ContinualLMError(f"{where}: end_task: the {split} split ({path}) has no records")
    labels = end.get("labels", "auto")
    if labels == "auto":
        labels = sorted({ex.target for ex in splits["train"]})
    elif not isinstance(labels, list) or not labels or any(isinstance(x, bool) or _value_text(x) is None
                                                             for x in labels):
        raise ContinualLMError(f"{where}: end_task: 'labels' must be a non-empty list of strings (quote yes/no) or "
                               f"'auto', got {labels!r}")
    labels = [_value_text(x) for x in labels]
    for split, examples in splits.items():
        bad = next((ex.target for ex in examples if ex.target not in labels), None)
        if bad is not None:
            raise ContinualLMError(f"{where}: end_task: a {split} record has label {bad!r}, which is not one of "
                                   f"the labels: {', '.join(map(repr, labels))}")
    settings = {key: end[key] for key in ("epochs", "lr", "batch_size", "train_body") if key in end}
    expected = {"epochs": (int, "a positive integer"), "batch_size": (int, "a positive integer"),
                "lr": ((int, float), "a positive number"), "train_body": (bool, "true or false")}
    for key, value in settings.items():
        kind, what = expected[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind) or (kind is not bool and value <= 0):
            raise ContinualLMError(f"{where}: end_task: {key!r} must be {what}, got {value!r}")
    return Task(
        name=name,
        kind=CORPUS,
        metric=ACCURACY,  # the end task's accuracy fills the matrix (its macro-F1 goes to matrix_macro_f1)
        instruction="",
        train=[Example(input=text, target="") for text in documents],  # documents; the loop cuts them into blocks
        test=splits["test"],  # the end task's test set (--max-test-per-task caps it)
        source=str(yaml_path),
        extra={"corpus_file": str(corpus_path), "end_task": {"train": splits["train"], "labels": labels, **settings}},
    )


def read_custom_stream(yaml_path: str | Path) -> list[Task]:
    """Read a user-defined stream: a YAML file with a ``tasks:`` list, in training order."""
    import yaml

    yaml_path = Path(yaml_path).expanduser()
    text = _read_text(yaml_path, "stream file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ContinualLMError(f"{yaml_path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ContinualLMError(f"{yaml_path}: expected a mapping with a 'tasks' list, got a {_type_name(data)}")
    unknown = sorted(set(data) - _STREAM_KEYS)
    if unknown:
        raise ContinualLMError(f"{yaml_path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; expected only 'tasks'")
    specs = data.get("tasks")
    if not isinstance(specs, list) or not specs:
        raise ContinualLMError(f"{yaml_path}: 'tasks' must be a non-empty list of task entries")
    tasks: list[Task] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        task = _read_custom_task(yaml_path, i, spec)
        if task.name in seen:
            raise ContinualLMError(f"{yaml_path}: tasks[{i}]: duplicate task name {task.name!r}; task names must be unique")
        seen.add(task.name)
        tasks.append(task)
    return tasks
