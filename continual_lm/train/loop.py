"""The one continual-learning loop. Methods plug into it through the hooks of methods/base.py.

For each phase of the method's schedule (by default: one phase per task, in stream order):
  seed -> before_task -> train (accelerate) -> after_task -> checkpoint -> evaluate -> matrix row.
Corpus tasks (continual pre-training, docs/continual_pretraining.md) train on token blocks with the LM loss and
are evaluated by fine-tuning a copy of the model on their end task (accuracy in the matrix, macro-F1 alongside).
Every phase re-seeds all RNGs from (seed, row), so a run resumed from a phase checkpoint repeats exactly what an
uninterrupted run does. Only the main process writes the run directory.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data.batching import train_loader
from ..data.collate import Collator
from ..data.tasks import CORPUS, Task
from ..errors import ContinualLMError
from ..eval.general import measure_run_general
from ..io_utils import atomic_write_json
from ..methods.base import Method, Phase, RunContext, TrainExample, build_method, protocol
from .checkpoint import RunDir
from .run_record import data_fingerprint
from .corpus_stream import check_corpus_method, corpus_tasks_in_blocks
from .engine import check_engine, end_training, engine_name, start_training


@dataclass
class Stream:
    tasks: list[Task]
    benchmark: str
    order: str | None
    unseen: list[Task] = field(default_factory=list)  # evaluated zero-shot only; their train split is dropped


def default_output_dir(config: RunConfig) -> Path:
    order = f"-o{config.order}" if config.order else ""
    return Path("runs") / f"{config.benchmark}{order}-{config.method}-{config.model.replace('/', '_')}-s{config.seed}"


def load_stream_for(config: RunConfig) -> Stream:
    from ..data.benchmarks import load_stream, resolve_order

    order = config.order
    if config.benchmark != "custom" and order is None and not config.tasks:
        from ..data.benchmarks import list_benchmarks

        order = list_benchmarks()[config.benchmark][0] if config.benchmark in list_benchmarks() else None
    if config.benchmark != "custom" and not config.tasks:
        resolve_order(config.benchmark, order)  # clear error for an unknown benchmark/order before loading data
    tasks = load_stream(
        config.benchmark, order, data_dir=config.data_dir, stream_file=config.stream_file,
        max_train=config.max_train_per_task, max_test=config.max_test_per_task,
        max_train_per_class=config.max_train_per_class, max_test_per_class=config.max_test_per_class,
        seed=config.seed, task_names=config.tasks,
    )
    return Stream(tasks, config.benchmark, order, _load_unseen_tasks(config, tasks))


def _load_unseen_tasks(config: RunConfig, stream_tasks: list[Task]) -> list[Task]:
    """--unseen-tasks NAME (a task of the run's benchmark) or BENCHMARK:NAME (any reader), test split only."""
    from ..data.benchmarks import read_task, subsample

    unseen = []
    for spec in config.unseen_tasks or []:
        benchmark, _, name = spec.rpartition(":")
        task = read_task(benchmark or config.benchmark, config.data_dir, name, stream_file=config.stream_file,
                         seed=config.seed)
        if task.name in {t.name for t in stream_tasks}:
            raise ContinualLMError(f"--unseen-tasks {spec}: {task.name} is part of the training stream; unseen tasks "
                                   f"must be tasks the run never trains on")
        task = subsample(task, max_test=config.max_test_per_task, max_test_per_class=config.max_test_per_class,
                         seed=config.seed)
        unseen.append(task.with_examples(train=[]))
    return unseen


def _versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    from .. import __version__

    return {"continual_lm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def read_single_task_reference(run_dir: str, tasks: list[Task], method: Method) -> dict[str, float]:
    """The FWT reference scores of ``--single-task-from RUN_DIR``, checked before anything trains: a finished run of
    method `single`, with a score for every task of the stream, that trained the same kind of PET block as
    ``method`` (a LoRA reference says nothing about how well a soft prompt learns a task)."""
    import json

    import yaml

    flag = f"--single-task-from {run_dir}"
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ContinualLMError(f"{flag}: no such run directory")
    path = folder / "results.json"
    if not path.exists():
        raise ContinualLMError(f"{flag}: no results.json there (expected a finished `single` run)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ContinualLMError(f"{flag}: {path} is not valid JSON: {err}") from None
    if results.get("method") != "single" or not results.get("single_task"):
        raise ContinualLMError(f"{flag}: a run of method {results.get('method')!r} without 'single_task' scores "
                               f"(expected a run of method `single`)")
    reference = results["single_task"]
    missing = [t.name for t in tasks if t.name not in reference]
    if missing:
        raise ContinualLMError(f"{flag}: no single-task score for {', '.join(missing)}")
    kind = results.get("pet_kind")
    if kind is None:  # written before results.json recorded it: the kind is in the run's config.yaml
        config_path = folder / "config.yaml"
        options = (yaml.safe_load(config_path.read_text()) or {}).get("method_options") if config_path.exists() else {}
        kind = ((options or {}).get("single") or {}).get("pet", "lora")
    if kind != method.pet_kind:
        raise ContinualLMError(f"{flag}: that single run trained {kind} blocks, but method {method.name} trains "
                               f"{method.pet_kind} blocks; its FWT reference must train the same kind: run "
                               f"`--method single --single-pet {method.pet_kind}` on the same stream")
    return {t.name: reference[t.name] for t in tasks}


def check_task_names_in_prompts(config: RunConfig, method: Method) -> None:
    """--prompt-task-name hands the task's name to the model with every input: refused for a method that declares
    no task id at test time, unless the user opts in to the leak (--allow-task-name-leak, recorded in results.json)."""
    if config.prompt_task_name and not method.uses_task_id_at_test and not config.allow_task_name_leak:
        raise ContinualLMError(f"--prompt-task-name puts each task's name into its prompts, which hands method "
                               f"{method.name} (declared: no task id at test time) the task id; add "
                               f"--allow-task-name-leak for a leak experiment (recorded in results.json)")


class ContinualRunner:
    def __init__(self, config: RunConfig, run_dir: Path, stream: Stream, backbone, method: Method, accelerator,
                 single_task: dict[str, float] | None = None):
        self.config = config
        self.single_task = single_task  # the FWT reference read from --single-task-from (checked at the start)
        self.run_dir = RunDir(run_dir)
        self.stream = stream
        self.tasks = stream.tasks
        self.backbone = backbone
        self.model = backbone.model
        self.method = method
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.collator = Collator(backbone.tokenizer, backbone.is_seq2seq, config.max_input_length,
                                 config.max_target_length, config.prompt_task_name,
                                 is_encoder_only=backbone.is_encoder_only, mlm_probability=config.mlm_probability)
        self.lr = config.lr if config.lr is not None else method.default_lr()
        self.touched: set[str] = set()
        self.global_step = 0
        method.context = RunContext(config, self.tasks, self.collator, accelerator, self.run_dir.path)
        self.consumed_task_indices: list[set[int]] = []  # which tasks' data each trained phase consumed
        self.data_fingerprint: dict[str, Any] | None = None  # hashes of the stream as read (train/run_record.py)

    # ---- state helpers ---------------------------------------------------------------------------------------

    def _mark_trainable(self) -> None:
        self.touched |= {n for n, p in self.model.named_parameters() if p.requires_grad}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if n in self.touched}

    def _load_params(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        params = dict(self.model.named_parameters())
        unknown = [n for n in tensors if n not in params]
        if unknown:
            raise ContinualLMError(f"{where} holds parameters this model does not have ({unknown[:3]}...); it was "
                                   f"written by a different model/method configuration")
        wrong = [f"{n} {tuple(v.shape)} (the model's: {tuple(params[n].shape)})" for n, v in tensors.items()
                 if v.shape != params[n].shape]
        if wrong:
            raise ContinualLMError(f"{where} holds parameters of other shapes: {wrong[:2]}; it was written by a "
                                   f"different model/method configuration")
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    def load_phase(self, row: int) -> None:
        trainable, tensors, meta = self.run_dir.load_checkpoint(row)
        self._load_params(trainable, str(self.run_dir.checkpoint_path(row)))
        self.method.load_extra_state(tensors, meta)

    @staticmethod
    def phase_seed(seed: int, row: int) -> int:
        return seed * 1009 + 7919 * (row + 1)

    # ---- training --------------------------------------------------------------------------------------------
    def train_phase(self, phase: Phase) -> float:
        from transformers import get_scheduler

        config, accelerator, model, method = self.config, self.accelerator, self.model, self.method
        examples = [TrainExample(i, ex) for i in phase.train_tasks for ex in self.tasks[i].train]
        examples = method.train_examples(phase.row, examples)
        if not examples:
            raise ContinualLMError(f"phase {phase.row}: no training examples (check --max-train-per-task)")
        self.consumed_task_indices.append({e.task_index for e in examples})
        features = [self.collator.encode_train(self.tasks[e.task_index], e.example, e.task_index) for e in examples]
        if not any(p.requires_grad for p in model.parameters()):
            raise ContinualLMError(f"method {method.name}: nothing to train in phase {phase.row}")
        generator = torch.Generator().manual_seed(self.phase_seed(config.seed, phase.row))
        self.collator.mlm_generator.manual_seed(self.phase_seed(config.seed, phase.row))  # masked LM positions
        loader = train_loader(features, config.batch_size, generator, self.collator.train_batch, config.group_by_length,
                              accelerator.num_processes * config.grad_accum)
        model.train()  # before start_training: a partitioned copy takes the model's mode
        training = start_training(
            accelerator, model, loader,
            make_optimizer=lambda params: torch.optim.AdamW(method.optimizer_groups(params, self.lr), lr=self.lr,
                                                            weight_decay=config.weight_decay))
        optimizer = training.optimizer
        # Not prepared by accelerate: its wrapper would step the schedule once per process and call, and DeepSpeed
        # steps only its own scheduler types. Stepped here once per optimizer step over the per-process batches.
        steps = math.ceil(len(training.loader) / config.grad_accum) * config.epochs
        scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * steps),
                                  num_training_steps=steps)
        names = " + ".join(self.tasks[i].name for i in phase.train_tasks)
        bar = tqdm(total=steps, desc=f"train {phase.row + 1}/{len(self.tasks)} {names}"[:60], unit="step",
                   disable=not (config.progress and self.is_main))
        start, seen, ema = time.perf_counter(), 0, None
        for _ in range(config.epochs):
            for batch in training.loader:
                with accelerator.accumulate(training.model), accelerator.autocast():
                    method.before_forward(model, batch)
                    outputs = method.forward(training.model, batch)
                    loss = outputs.loss
                    extra = method.extra_loss(model, batch, outputs)
                    total = loss + extra if extra is not None else loss
                    accelerator.backward(total)  # DeepSpeed: also clips and steps the optimizer
                    if accelerator.sync_gradients and not training.steps_in_backward:
                        method.after_backward(model)
                        if config.max_grad_norm:
                            accelerator.clip_grad_norm_(training.params, config.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients and not training.steps_in_backward:
                        method.after_optimizer_step(model, optimizer)
                    optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    raise ContinualLMError(f"training loss became {loss.item()} in phase {phase.row}; lower --lr")
                seen += batch["input_ids"].shape[0] * accelerator.num_processes
                ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
                if accelerator.sync_gradients:
                    self.global_step += 1  # the trackers' x axis for training curves
                    self.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0],
                              "train/phase": phase.row}, step=self.global_step)
                    scheduler.step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{ema:.3f}", samples_s=f"{seen / (time.perf_counter() - start):.1f}")
        bar.close()
        outputs = loss = total = extra = None  # a live autograd graph would keep a partitioned copy alive
        end_training(accelerator, model, training)
        method.after_task(model, phase.row, self.tasks[phase.row], examples)
        return time.perf_counter() - start

    # ---- evaluation ------------------------------------------------------------------------------------------
    def evaluate_tasks(self, tasks: list[Task], indices: list[int], label: str) -> tuple[list[float], dict]:
        """Scores (0..100, rounded to 4 decimals) and predictions of ``tasks`` under the current model. The test
        inputs of all generating tasks are decoded together (shared batches, eval/generate.py)."""
        from ..eval.generate import predict_requests
        from ..eval.scores import score_task
        from .end_task import corpus_task_scores

        generating = [(task, j) for task, j in zip(tasks, indices) if task.kind != CORPUS]
        requests = [(task, j, e.input) for task, j in generating for e in task.test]
        scores, predictions = [], {}
        with self.accelerator.autocast():
            texts = predict_requests(self.model, self.method, self.collator, requests, self.config.eval_batch_size,
                                     self.accelerator, self.config.progress, desc=f"eval {label}")
            for task, _ in generating:
                predictions[task.name], texts = texts[:len(task.test)], texts[len(task.test):]
            for task in tasks:
                if task.kind == CORPUS:  # its end task: accuracy into the matrix, both scores as its "predictions"
                    predictions[task.name] = corpus_task_scores(self.model, self.backbone.tokenizer, task,
                                                                max_length=self.config.max_input_length,
                                                                seed=self.config.seed)
                    scores.append(predictions[task.name]["accuracy"])
                else:
                    scores.append(round(score_task(task, predictions[task.name]), 4))
        return scores, {task.name: predictions[task.name] for task in tasks}

    def evaluate_phase(self, phase: Phase) -> tuple[list[float | None], dict[str, list[str]]]:
        row: list[float | None] = [None] * len(self.tasks)
        scores, predictions = self.evaluate_tasks([self.tasks[j] for j in phase.eval_tasks], list(phase.eval_tasks),
                                                  f"after {phase.row + 1}")
        for j, value in zip(phase.eval_tasks, scores):
            row[j] = value
        self.log({f"eval/{self.tasks[j].name}": v for j, v in zip(phase.eval_tasks, scores)}, step=phase.row + 1)
        return row, predictions

    def macro_f1_row(self, predictions: dict) -> list[float | None] | None:
        """The end tasks' macro-F1 of one evaluation (a row of results.json["matrix_macro_f1"]); None without
        corpus tasks."""
        if not any(t.kind == CORPUS for t in self.tasks):
            return None
        return [predictions[t.name]["macro_f1"] if t.kind == CORPUS and t.name in predictions else None
                for t in self.tasks]

    def evaluate_unseen(self, state: dict[str, Any], key: str, label: str) -> None:
        """Zero-shot scores of the unseen tasks, once per key ("unseen_base" before training, "unseen_final")."""
        if not self.stream.unseen or key in state:
            return
        scores, predictions = self.evaluate_tasks(self.stream.unseen, [-1] * len(self.stream.unseen), label)
        state[key] = {t.name: v for t, v in zip(self.stream.unseen, scores)}
        if self.is_main:
            atomic_write_json(self.run_dir.path / "predictions" / f"{key}.json", predictions)
            self.run_dir.write_state(state)
        self.accelerator.wait_for_everyone()

    def log(self, values: dict[str, float], step: int) -> None:
        if self.config.report_to != "none":
            self.accelerator.log(values, step=step)

    # ---- the loop --------------------------------------------------------------------------------------------
    def _start_phase(self, phase: Phase, initial: dict[str, torch.Tensor]) -> None:
        """Seed, reset if the phase asks, and let the method grow/freeze its structure for the phase."""
        from accelerate.utils import set_seed

        set_seed(self.phase_seed(self.config.seed, phase.row))
        if phase.reset:
            self._load_params(initial, "the initial state")
        self.method.before_task(self.model, phase.row, self.tasks[phase.row])
        self._mark_trainable()

    def _initial_state(self) -> dict[str, torch.Tensor]:
        self._mark_trainable()
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def restore_final(self) -> int:
        """Rebuild the model as it was after the last trained phase (for predict/export/merge/analyses)."""
        state = self.run_dir.read_state()
        phases = self.method.schedule(len(self.tasks), self.config.eval_all_tasks)
        trained = [p for p in phases if state["phases"].get(str(p.row), {}).get("trained")]
        if not trained:
            raise ContinualLMError(f"{self.run_dir.path}: no phase has finished training yet; nothing to load")
        initial = self._initial_state()
        for phase in trained:
            self._start_phase(phase, initial)
        self.load_phase(trained[-1].row)
        self.model.eval()
        return trained[-1].row

    def run(self) -> dict[str, Any]:
        """Run (or resume) every phase, then write results.json; the main process holds the run directory's lock
        meanwhile, so that a second process cannot write the same run."""
        if self.is_main:
            self.run_dir.acquire_lock()
        try:
            return self._run_phases()
        finally:
            self.run_dir.release_lock()

    def _run_phases(self) -> dict[str, Any]:
        config, method = self.config, self.method
        state = self.run_dir.read_state()
        phases = method.schedule(len(self.tasks), config.eval_all_tasks)
        initial = self._initial_state()
        self.evaluate_unseen(state, "unseen_base", "zero-shot base model")
        measure_run_general(self, state, "before")  # lm-eval general abilities of the base model (general_tasks)
        pending_load: int | None = None
        for phase in phases:
            key = str(phase.row)
            done = state["phases"].get(key, {})
            if done.get("trained") and done.get("row") is not None:
                self._start_phase(phase, initial)  # finished earlier: structure only, weights from its checkpoint
                pending_load = phase.row
                continue
            if pending_load is not None and not done.get("trained"):
                self.load_phase(pending_load)  # the state this phase trains from
            pending_load = None  # a phase trained earlier loads its own checkpoint, which holds everything
            self._start_phase(phase, initial)
            if done.get("trained"):
                self.load_phase(phase.row)
            else:
                train_s = self.train_phase(phase)
                done = {"trained": True, "row": None, "train_s": train_s}
                state["phases"][key] = done  # every process keeps the state; only the main one writes it
                if self.is_main:
                    tensors, meta = method.extra_state()
                    self.run_dir.save_checkpoint(phase.row, self.trainable_state(), tensors, meta)
                    self.run_dir.write_state(state)
                self.accelerator.wait_for_everyone()
            start = time.perf_counter()
            row, predictions = self.evaluate_phase(phase)
            done.update(row=row, eval_s=time.perf_counter() - start)
            f1_row = self.macro_f1_row(predictions)
            if f1_row is not None:
                done["row_macro_f1"] = f1_row
            state["phases"][key] = done
            if self.is_main:
                atomic_write_json(self.run_dir.path / "predictions" / f"after_phase_{phase.row:02d}.json", predictions)
                self.run_dir.write_state(state)
                if config.keep_checkpoints == "last":  # only now: a resume from here needs this phase's only
                    self.run_dir.prune_checkpoints(phase.row)
            self.accelerator.wait_for_everyone()
        if pending_load is not None:
            self.load_phase(pending_load)
        self.evaluate_unseen(state, "unseen_final", "unseen after the stream")
        measure_run_general(self, state, "after")
        return self.finish(state, phases)

    def finish(self, state: dict[str, Any], phases: list[Phase]) -> dict[str, Any]:
        from ..eval.cl_metrics import cl_metrics

        T = len(self.tasks)
        matrix: list[list[float | None]] = [[None] * T for _ in range(T)]
        for phase in phases:
            matrix[phase.row] = state["phases"][str(phase.row)]["row"]
        names = [t.name for t in self.tasks]
        own_single = self.config.method == "single"
        single = {names[j]: matrix[j][j] for j in range(T)} if own_single else self.single_task
        metrics = cl_metrics(
            matrix,
            single_task=[single[n] for n in names] if single and not own_single else None,
            final_row=[matrix[j][j] for j in range(T)] if own_single else None,
        )
        phase_states = state["phases"].values()
        results = {
            "benchmark": self.stream.benchmark,
            "order": self.stream.order,
            "method": self.config.method,
            "model": self.config.model,
            "seed": self.config.seed,
            "tasks": names,
            "metric_per_task": {t.name: t.metric for t in self.tasks},
            "answer_per_task": {t.name: self.collator.answer_settings(t) for t in self.tasks if t.kind != CORPUS},
            "matrix": matrix,
            "single_task": single,
            "metrics": metrics,
            "timing": {"train_s": round(sum(p.get("train_s", 0.0) for p in phase_states), 2),
                       "eval_s": round(sum(p.get("eval_s", 0.0) for p in phase_states), 2)},
            "versions": _versions(),
            "device": _device_name(self.accelerator.device),
            "engine": engine_name(self.accelerator),
            "batch": {"per_process": self.config.batch_size, "processes": self.accelerator.num_processes,
                      "grad_accum": self.config.grad_accum,
                      "global": self.config.batch_size * self.accelerator.num_processes * self.config.grad_accum},
            "protocol": {**protocol(self.method), "task_names_in_prompts": bool(self.config.prompt_task_name)},
            "pet_kind": self.method.pet_kind,
            "preset": self.run_dir.read_preset(),
        }
        if any(t.kind == CORPUS for t in self.tasks):  # continual pre-training: the end tasks' macro-F1 too
            f1 = [[None] * T for _ in range(T)]
            for phase in phases:
                f1[phase.row] = state["phases"][str(phase.row)].get("row_macro_f1") or [None] * T
            results["matrix_macro_f1"] = f1
            results["metrics_macro_f1"] = cl_metrics(f1, final_row=[f1[j][j] for j in range(T)] if own_single else None)
        if self.stream.unseen:
            results["unseen"] = {"tasks": [t.name for t in self.stream.unseen],
                                 "metric_per_task": {t.name: t.metric for t in self.stream.unseen},
                                 "final": state["unseen_final"], "base_model": state["unseen_base"]}
        if state.get("general"):
            results["general"] = state["general"]
        self.log({f"cl/{k}": v for k, v in metrics.items() if v is not None}, step=len(self.tasks))
        if self.config.report_to != "none":
            self.accelerator.end_training()
        if self.is_main:
            from ..eval.report import write_run_report

            self.method.on_run_end(self.model)
            atomic_write_json(self.run_dir.results_path, results)
            write_run_report(self.run_dir.path, results)
        return results


def _device_name(device: torch.device) -> str:
    """What the run trained on, for results.json: the accelerator's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def _cpu_processes() -> bool:
    """Launched as several processes (accelerate launch / torchrun) on a machine without an accelerator."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def build_runner(config: RunConfig, path: Path, *, backbone=None, for_training: bool = True) -> ContinualRunner:
    """Everything a run needs, built from its configuration: stream, backbone, method (set up), accelerator.
    Writes nothing (train/assemble.py decides what happens to the run directory, after this succeeded).
    ``for_training``: also read and check the run's FWT reference (``--single-task-from``), as a run needs it;
    loading a finished run for predict/export/merge does not."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    method = build_method(config)  # validates the method spec and its options before any heavy work
    if for_training:  # a run that trains (not a finished run loaded for predict/export, which may have moved)
        check_task_names_in_prompts(config, method)
    # Several processes on a machine without an accelerator: cpu=True makes accelerate form a gloo process group
    # instead of running independent copies that all write the run directory.
    cpu_processes = _cpu_processes()
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=config.mixed_precision,
                              cpu=cpu_processes, log_with=None if config.report_to == "none" else config.report_to,
                              project_dir=str(path))
    check_engine(accelerator, method, config)
    stream = load_stream_for(config)
    check_corpus_method(method, stream.tasks)
    fingerprint = data_fingerprint(stream, config)  # of the tasks as read (before corpus blocks)
    single_task = None
    if for_training and config.single_task_from and config.method != "single":  # checked before training
        single_task = read_single_task_reference(config.single_task_from, stream.tasks, method)
    config.order = stream.order
    config.output_dir = str(path)
    if config.lr is None:
        config.lr = method.default_lr()
    set_seed(config.seed)
    if backbone is None:
        from ..models.backbone import load_backbone

        backbone = load_backbone(config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
                                 seed=config.seed)
    backbone.model.to(accelerator.device)
    stream.tasks = corpus_tasks_in_blocks(stream, backbone, config)
    method.tasks = stream.tasks
    runner = ContinualRunner(config, path, stream, backbone, method, accelerator,
                             single_task)  # sets method.context
    runner.data_fingerprint = fingerprint
    method.setup(backbone.model, backbone)
    if config.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return runner


def run(config: RunConfig | None = None, *, output_dir: str | Path | None = None, resume: bool = False,
        overwrite: bool = False, reuse: bool = False, backbone=None) -> dict[str, Any]:
    """Run, resume, replace or reuse a continual-learning stream (train/assemble.py); the results.json content."""
    from .assemble import run as assembled_run

    return assembled_run(config, output_dir=output_dir, resume=resume, overwrite=overwrite, reuse=reuse,
                         backbone=backbone)


def load_final_runner(run_dir: str | Path, *, backbone=None, trust_remote_code: bool = False) -> ContinualRunner:
    """The runner of a run directory with its final trained model restored (nothing is written). The model's own
    code runs only with ``trust_remote_code`` (the current command's choice, never the run directory's)."""
    from .assemble import recorded_config

    path = Path(run_dir)
    config, _ = recorded_config(path)
    if config.trust_remote_code and not trust_remote_code:
        raise ContinualLMError(f"{path} was run with --trust-remote-code: its model ({config.model}) runs its own "
                               f"code. Pass --trust-remote-code to load it, only if you trust that code")
    config = dataclasses.replace(config, trust_remote_code=trust_remote_code, progress=False)
    runner = build_runner(config, path, backbone=backbone, for_training=False)
    runner.restore_final()
    return runner
