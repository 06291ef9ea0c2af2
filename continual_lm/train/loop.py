"""The one continual-learning loop: a state machine over the phases of the method's schedule. Methods plug into it
through the hooks of methods/base.py; everything a run records (prediction files, trackers, progress, unseen
tasks, general abilities, reports) plugs into it as callbacks (callbacks/).

For each phase (by default one per task, in stream order):
    seed -> before_task -> train -> after_task -> checkpoint -> evaluate (every --eval-every-th phase and the last)
A phase finished before a resume only replays its structure (before_task); the next phase trains from its
checkpoint. Every phase re-seeds all RNGs from (seed, row), so a resumed run repeats exactly what an uninterrupted
run does. Only the main process writes the run directory; results.json is assembled from the run's state by
eval/results.py.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..callbacks.base import Callback, CallbackList
from ..config import RunConfig
from ..data.batching import train_loader
from ..data.collate import Collator
from ..data.stream import Stream
from ..data.tasks import CORPUS
from ..errors import ContinualLMError
from ..eval.evaluate import Evaluation, evaluate_tasks
from ..eval.results import build_results, evaluated_phases
from ..io_utils import atomic_write_json
from ..methods.base import Method, Phase, RunContext, TrainExample, protocol
from .checkpoint import RunDir
from .run_record import identity
from ..version import library_versions
from .engine import device_name, end_training, engine_name, start_training


class ContinualRunner:
    def __init__(self, config: RunConfig, run_dir, stream: Stream, backbone, method: Method, accelerator, *,
                 single_task: dict[str, float] | None = None, callbacks: list[Callback] = ()):
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
        self.callbacks = CallbackList(callbacks)
        self.collator = Collator(backbone.tokenizer, backbone.is_seq2seq, config.max_input_length,
                                 config.max_target_length, config.prompt_task_name,
                                 is_encoder_only=backbone.is_encoder_only, mlm_probability=config.mlm_probability)
        self.touched: set[str] = set()
        self.global_step = 0  # optimizer steps of the whole run (recorded per phase, so it continues on resume)
        self.state: dict[str, Any] = {"phases": {}}
        self.consumed_task_indices: list[set[int]] = []  # which tasks' data each trained phase consumed
        self.data_fingerprint: dict[str, Any] | None = None  # hashes of the stream as read (train/run_record.py)
        self.trainable_per_phase: dict[int, int] = {}  # parameters trainable in each phase (results "parameters")
        self.phases = method.schedule(len(self.tasks), config.eval_all_tasks)
        self.evaluated = evaluated_phases(len(self.phases), config.eval_every, config.eval_final_only)
        method.context = RunContext(config, self.tasks, self.collator, accelerator, self.run_dir.path)

    # ---- state ------------------------------------------------------------------------------------------------
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

    def save_state(self) -> None:
        """Write state.json (main process); every process keeps the same state in memory."""
        if self.is_main:
            self.run_dir.write_state(self.state)

    @staticmethod
    def phase_seed(seed: int, row: int) -> int:
        return seed * 1009 + 7919 * (row + 1)

    def evaluates(self, phase: Phase) -> bool:
        """Whether the schedule evaluates ``phase`` (--eval-every, --eval-final-only)."""
        return self.evaluated[self.phases.index(phase)]

    # ---- training ---------------------------------------------------------------------------------------------
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
            make_optimizer=lambda params: torch.optim.AdamW(method.optimizer_groups(params, config.lr), lr=config.lr,
                                                            weight_decay=config.weight_decay))
        optimizer = training.optimizer
        # Not prepared by accelerate: its wrapper would step the schedule once per process and call, and DeepSpeed
        # steps only its own scheduler types. Stepped here once per optimizer step over the per-process batches.
        steps = math.ceil(len(training.loader) / config.grad_accum) * config.epochs
        scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * steps),
                                  num_training_steps=steps)
        self.callbacks.on_train_begin(self, phase, steps)
        start, seen = time.perf_counter(), 0
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
                if accelerator.sync_gradients:
                    self.global_step += 1
                    logs = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                            "samples_per_s": seen / (time.perf_counter() - start)}
                    scheduler.step()
                    self.callbacks.on_step(self, phase, logs)
        outputs = loss = total = extra = None  # a live autograd graph would keep a partitioned copy alive
        end_training(accelerator, model, training)
        method.after_task(model, phase.row, self.tasks[phase.row], examples)
        return time.perf_counter() - start

    # ---- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, tasks: list, indices: list[int], label: str) -> Evaluation:
        """Scores and per-example records of ``tasks`` (stream positions ``indices``, -1 for others) under the
        current model (eval/evaluate.py)."""
        config = self.config
        return evaluate_tasks(self.model, self.method, self.collator, self.backbone.tokenizer, tasks, indices,
                              batch_size=config.eval_batch_size, max_length=config.max_input_length, seed=config.seed,
                              accelerator=self.accelerator, progress=config.progress, label=label)

    def evaluate_phase(self, phase: Phase) -> Evaluation:
        tasks = [self.tasks[j] for j in phase.eval_tasks]
        return self.evaluate(tasks, list(phase.eval_tasks), f"after {phase.row + 1}")

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _start_phase(self, phase: Phase, initial: dict[str, torch.Tensor]) -> None:
        """Seed, reset if the phase asks, and let the method grow/freeze its structure for the phase."""
        from accelerate.utils import set_seed

        set_seed(self.phase_seed(self.config.seed, phase.row))
        if phase.reset:
            self._load_params(initial, "the initial state")
        self.method.before_task(self.model, phase.row, self.tasks[phase.row])
        self._mark_trainable()
        self.trainable_per_phase[phase.row] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def _initial_state(self) -> dict[str, torch.Tensor]:
        self._mark_trainable()
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def restore_final(self) -> int:
        """Rebuild the model as it was after the last trained phase (for predict/export/merge/analyses)."""
        state = self.run_dir.read_state()
        trained = [p.row for p in self.phases if state["phases"].get(str(p.row), {}).get("trained")]
        if not trained:
            raise ContinualLMError(f"{self.run_dir.path}: no phase has finished training yet; nothing to load")
        self.restore_phases(trained)
        self.load_phase(trained[-1])
        self.model.eval()
        return trained[-1]

    def restore_phases(self, rows: list[int], trainable: dict[str, torch.Tensor] | None = None,
                       where: str = "") -> None:
        """Grow and freeze the model's structure through the phases ``rows`` as training did (weights not trained),
        load ``trainable`` (an export's state, read from ``where``) when given, and switch to evaluation mode."""
        initial = self._initial_state()
        for phase in self.phases:
            if phase.row in rows:
                self._start_phase(phase, initial)
        if trainable is not None:
            self._load_params(trainable, where)
        self.model.eval()

    def parameter_counts(self) -> dict[str, Any]:
        """The cost columns of reports: parameters trainable in the largest phase, parameters the run keeps beyond
        the base model (every parameter ever trained + the method's tensors: frozen LoRAs, selectors, Fisher
        matrices, ...), that over the number of tasks, and the model's parameters (LoRAs and prompts included)."""
        stored = _numel(self.trainable_state().values()) + _numel(self.method.extra_state()[0].values())
        return {"trainable": max(self.trainable_per_phase.values(), default=0), "stored": stored,
                "stored_per_task": round(stored / max(len(self.tasks), 1), 1),
                "model": _numel(self.model.parameters())}

    def run(self) -> dict[str, Any]:
        """Run (or resume) every phase, then write results.json; the main process holds the run directory's lock
        meanwhile, so that a second process cannot write the same run."""
        if self.is_main:
            self.run_dir.acquire_lock()
        try:
            return self._run_phases()
        finally:
            self.run_dir.release_lock()

    def _finished(self, done: dict[str, Any]) -> bool:
        return bool(done.get("trained")) and (done.get("row") is not None or done.get("evaluated") is False)

    def _run_phases(self) -> dict[str, Any]:
        self.state = self.run_dir.read_state()
        self.state.setdefault("sections", {})
        initial = self._initial_state()
        self.callbacks.on_run_start(self)
        self.accelerator.wait_for_everyone()
        pending_load: int | None = None  # the latest phase finished before a resume: the next one starts from it
        for phase, evaluate in zip(self.phases, self.evaluated):
            key = str(phase.row)
            done = self.state["phases"].get(key, {})
            if self._finished(done):
                self._start_phase(phase, initial)  # structure only, weights from its checkpoint
                self.global_step += done.get("steps", 0)
                pending_load = phase.row
                continue
            if pending_load is not None and not done.get("trained"):
                self.load_phase(pending_load)  # the state this phase trains from
            pending_load = None  # a phase trained earlier loads its own checkpoint, which holds everything
            self._start_phase(phase, initial)
            if done.get("trained"):
                self.load_phase(phase.row)
                self.global_step += done.get("steps", 0)
            else:
                steps_before = self.global_step
                done = {"trained": True, "row": None, "train_s": self.train_phase(phase),
                        "steps": self.global_step - steps_before}
                if not evaluate:
                    done["evaluated"] = False
                self.state["phases"][key] = done
                if self.is_main:
                    tensors, meta = self.method.extra_state()
                    self.run_dir.save_checkpoint(phase.row, self.trainable_state(), tensors, meta)
                self.save_state()
                self.accelerator.wait_for_everyone()
                self.callbacks.on_train_end(self, phase)
            if evaluate:
                evaluation = self.evaluate_phase(phase)
                row: list[float | None] = [None] * len(self.tasks)
                for j, value in zip(phase.eval_tasks, evaluation.scores):
                    row[j] = value
                done.update(row=row, eval_s=evaluation.seconds)
                if any(t.kind == CORPUS for t in self.tasks):  # the end tasks' macro-F1 (matrix_macro_f1)
                    done["row_macro_f1"] = [evaluation.macro_f1(t) for t in self.tasks]
                self.callbacks.on_phase_evaluated(self, phase, evaluation)
                self.save_state()
            self._prune_before(phase)
            self.accelerator.wait_for_everyone()
        if pending_load is not None:
            self.load_phase(pending_load)
            self._prune_before(self.phases[-1])  # killed between the last evaluation and its pruning
        self.callbacks.on_stream_end(self)
        self.accelerator.wait_for_everyone()
        results = self.results()
        if self.is_main:
            atomic_write_json(self.run_dir.results_path, results)
        self.callbacks.on_run_end(self, results)
        return results

    def _prune_before(self, phase: Phase) -> None:
        """--keep-checkpoints last: once ``phase`` is trained and evaluated, a resume needs its checkpoint only."""
        if self.is_main and self.config.keep_checkpoints == "last":
            self.run_dir.prune_checkpoints(phase.row)

    def results(self) -> dict[str, Any]:
        """results.json of the run's state (eval/results.py)."""
        config = self.config
        option = "--eval-final-only" if config.eval_final_only else f"--eval-every {config.eval_every}"
        return build_results(
            identity={"benchmark": self.stream.benchmark, "order": self.stream.order, "method": config.method,
                      "model": config.model, "seed": config.seed},
            tasks=self.tasks, phases=self.phases, state=self.state, single_task=self.single_task,
            evaluated=self.evaluated, schedule_option=option,
            answer_per_task={t.name: self.collator.answer_settings(t) for t in self.tasks if t.kind != CORPUS},
            run_info={"versions": library_versions(), "device": device_name(self.accelerator.device),
                      "engine": engine_name(self.accelerator),
                      "batch": {"per_process": config.batch_size, "processes": self.accelerator.num_processes,
                                "grad_accum": config.grad_accum,
                                "global": config.batch_size * self.accelerator.num_processes * config.grad_accum},
                      "protocol": {**protocol(self.method), "task_names_in_prompts": bool(config.prompt_task_name)},
                      "pet_kind": self.method.pet_kind, "preset": self.run_dir.read_preset(),
                      "config": identity(config),  # what the run computes (train/run_record.py): reports group by it
                      "parameters": self.parameter_counts()})


def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)

