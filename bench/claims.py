"""Claims check: does our implementation of each seed paper's method show the effect its paper reports?

    python bench/claims.py [--scale cpu|cpu-short|gpu] [--jobs 2] [--seeds 1 2 3] [--papers migu amlora sapt]
                           [--data-dir ../shared/data] [--dry-run] [--table-only]

Each paper's headline claims (CLAIMS, quoted with their section or table) are stated as measurable comparisons
between rows (ROWS: a method, or a method with options) on one protocol per scale (SCALES), run with several seeds.
For every claim the script reports each row's mean ± std over seeds, the mean difference paired by seed with its
95 % Student-t interval, and a verdict by the rule of continual_lm/eval/stats.py: "reproduced" (the interval lies
on the claimed side of the claim's bound), "not reproduced" (on the other side, or inside the claim's practically
null band) or "inconclusive at this scale". Selector claims read the routing accuracy that AM-LoRA and SAPT record
after each task of the stream (continual_lm/eval/routing.py).

Every run uses ``--preset paper`` (the papers' values for SmolLM2's llama family: LoRA alpha/dropout, constant
schedule, AM-LoRA's lambda, MIGU's threshold and update mask, SAPT's eta, rank and generator settings, ...) below
the protocol's own values, which must differ from the papers on a 2-core CPU (model, steps, learning rate, lengths,
SAPT's generator budget): Scale.deviations lists them and CLAIMS.md repeats them.

Runs go to bench/runs/claims/<scale>/<row>/seed<k>/ (checkpoints: last phase only). A finished run is reused, an
interrupted one resumed, so the script can be stopped and started again at any time; rows shared by several claims
(seqlora, inclora) run once. ``--jobs N`` runs N runs at a time (bench/reproduce.py's process pool), each with
CPU count / N threads and its output in <row>/seed<k>.log. ``--dry-run`` lists the runs with an estimated cost;
``--table-only`` rewrites the result file from the finished runs. The `cpu` scale writes bench/CLAIMS.md, `cpu-short`
(two tasks, fewer steps: about an hour with --papers amlora sapt) bench/CLAIMS-short.md, `gpu` (more steps and test
examples, 5 seeds) bench/CLAIMS-gpu.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from continual_lm.config import RunConfig  # noqa: E402
from continual_lm.eval.routing import read_routing  # noqa: E402
from continual_lm.eval.stats import mean_interval, paired_interval, verdict  # noqa: E402
from continual_lm.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from reproduce import invocations_markdown, read_invocations, record_invocation, run_all  # noqa: E402

FULL_FT_LR = 2e-5  # full fine-tuning rows (our default; MIGU's scripts give 1e-4 for T5 only)


@dataclass(frozen=True)
class Scale:
    """One protocol: the model, the RunConfig values every row gives (they win over the paper presets), seeds,
    SAPT's generator budget, and the per-step costs the dry run estimates with (CPU seconds, 1 thread)."""
    description: str
    model: str
    settings: dict
    seeds: tuple[int, ...]
    generator_steps: int  # SAPT's pseudo-input generator (paper: 5000 steps)
    attention_samples: int  # AM-LoRA: test inputs per task whose routing is recorded after each task
    output: str  # the result file, relative to bench/
    deviations: tuple[str, ...]  # how the protocol differs from the papers' setups
    step_s: float  # one LoRA training step of the protocol's batch (the other kinds: COST_FACTORS)
    eval_s: float  # one test example (greedy decoding of a label)


# What a row costs relative to a seqlora training step (measured on SmolLM2-135M: bench/SPEED.md, bench/migu_*.md).
COST_FACTORS = {"seqlora": 1.0, "inclora": 1.1, "amlora": 1.15, "sapt-lora": 1.15, "seqft": 2.9}
MIGU_FACTOR = {"lora": 1.03, "full": 1.15}  # +migu: statistics hooks and the update mask
GENERATOR_FACTOR = 2.0  # a SAPT generator step (batch 16) against a training step (batch 8)

# Standard CL order 1 without amazon (5 star ratings, near chance for SmolLM2 at these budgets: docs/claims.md):
# dbpedia -> yahoo -> agnews, 384 training examples per task (48 steps of 8), 150 test examples per task.
CPU_SETTINGS = dict(benchmark="standard", tasks=["dbpedia", "yahoo", "agnews"], max_train_per_task=384,
                    max_test_per_task=150, max_input_length=128, max_target_length=8, batch_size=8, grad_accum=1,
                    epochs=1, eval_batch_size=16, lr=1e-3)
SCALES = {
    # Sized for the lead's 4-6 h of a 2-core CPU with --jobs 2 (27 runs: 9 rows x 3 seeds; docs/claims.md has the
    # sizing and the estimate): 3 tasks, 48 optimizer steps per task, 150 test examples per task (1 example = 0.22 AP
    # points), 3 seeds.
    "cpu": Scale(
        description="standard CL order 1 without amazon (dbpedia, yahoo, agnews), SmolLM2-135M, 384 train / 150 "
                    "test examples per task (seeded draws), batch 8, one epoch: 48 optimizer steps per task",
        model="smollm2-135m", settings=CPU_SETTINGS, seeds=(1, 2, 3), generator_steps=32, attention_samples=64,
        output="CLAIMS.md",
        deviations=(
            "model: SmolLM2-135M-Instruct (papers: T5-large, LLaMA-2-7B and larger)",
            "tasks: standard CL order 1 without amazon, which SmolLM2 does not learn at these budgets (papers: all "
            "four, and the 15-task long sequence)",
            "data: 384 training examples per task, one epoch, batch 8 (48 steps); papers: the O-LoRA setup's task "
            "sets (AM-LoRA, MIGU) or 1000 per task for 10-100 epochs (SAPT)",
            "test: 150 examples per task, drawn by the seed (papers: the full test sets, 500 per class)",
            "learning rate 1e-3 for every LoRA row, 2e-5 for full fine-tuning (the presets' LLaMA values, 1e-4 and "
            "SAPT's 5e-5, are for thousands of steps); no gradient accumulation (presets: 8, SAPT 4)",
            "inputs cut to 128 tokens, answers to 8 (presets: 512-1024 and 50)",
            "SAPT's generator: 32 steps of 16 inputs, pseudo inputs up to 128 tokens (paper: 5000 steps, 512)",
        ),
        step_s=5.0, eval_s=0.25),
    # A reduced protocol for about an hour of a 2-core CPU: two tasks (dbpedia -> agnews, the two that SmolLM2 learns
    # fastest), 32 optimizer steps per task, 150 test examples per task, 3 seeds. With --papers amlora sapt (15 runs)
    # it decides the AP, forgetting and routing claims of AM-LoRA and SAPT with one earlier task; MIGU's rows (full
    # fine-tuning is 3x a LoRA step) are left to the `cpu` scale.
    "cpu-short": Scale(
        description="dbpedia -> agnews (standard CL tasks), SmolLM2-135M, 256 train / 150 test examples per task "
                    "(seeded draws), batch 8, one epoch: 32 optimizer steps per task",
        model="smollm2-135m",
        # its runs were made while length-grouped batches were the default: the scale keeps them (CPU_SETTINGS: plain)
        settings={**CPU_SETTINGS, "tasks": ["dbpedia", "agnews"], "max_train_per_task": 256, "group_by_length": True},
        seeds=(1, 2, 3), generator_steps=32, attention_samples=64, output="CLAIMS-short.md",
        deviations=(
            "model: SmolLM2-135M-Instruct (papers: T5-large, LLaMA-2-7B and larger)",
            "tasks: two of standard CL order 1, dbpedia then agnews (papers: four-task orders and the 15-task long "
            "sequence): forgetting and selection are measured on one earlier task",
            "data: 256 training examples per task, one epoch, batch 8 (32 steps); test: 150 per task, by seed",
            "training batches grouped by length (--group-by-length, the default when these runs were made; the "
            "papers and the `cpu` scale shuffle plainly, and on the small preset grouping moved single and mtl by "
            "9-12 AP points: bench/group_by_length.md)",
            "learning rate 1e-3 for every LoRA row, 2e-5 for full fine-tuning; no gradient accumulation",
            "inputs cut to 128 tokens, answers to 8 (presets: 512-1024 and 50)",
            "SAPT's generator: 32 steps of 16 inputs, pseudo inputs up to 128 tokens (paper: 5000 steps, 512)",
        ),
        step_s=5.0, eval_s=0.25),
    # The same claims on all four tasks of order 1 with the `medium` preset's schedule (250 steps per task, where
    # SAPT's selection learns: bench/RESULTS-medium.md), 500 test examples per task and 5 seeds: for a GPU.
    "gpu": Scale(
        description="standard CL order 1 (dbpedia, amazon, yahoo, agnews), SmolLM2-135M, 1000 train / 500 test "
                    "examples per task, batch 8, two epochs: 250 optimizer steps per task",
        model="smollm2-135m",
        settings={**{k: v for k, v in CPU_SETTINGS.items() if k != "tasks"}, "order": "1",
                  "max_train_per_task": 1000, "max_test_per_task": 500, "epochs": 2, "eval_batch_size": 64},
        seeds=(1, 2, 3, 4, 5), generator_steps=500, attention_samples=200, output="CLAIMS-gpu.md",
        deviations=(
            "model: SmolLM2-135M-Instruct (papers: T5-large, LLaMA-2-7B and larger)",
            "data: 1000 training examples per task, two epochs, batch 8 (250 steps); test: 500 per task by seed",
            "learning rate 1e-3 for every LoRA row, 2e-5 for full fine-tuning; no gradient accumulation",
            "inputs cut to 128 tokens, answers to 8 (presets: 512-1024 and 50)",
            "SAPT's generator: 500 steps of 16 inputs, pseudo inputs up to 128 tokens (paper: 5000 steps, 512)",
        ),
        step_s=0.15, eval_s=0.01),
}

# Rows: name -> (method, that method's options). Each row runs once per seed and serves every claim naming it.
ROWS = {
    "seqlora": ("seqlora", {}),
    "seqlora+migu": ("seqlora+migu", {}),
    "inclora": ("inclora", {}),
    "inclora+migu": ("inclora+migu", {}),
    "seqft": ("seqft", {}),
    "seqft+migu": ("seqft+migu", {}),
    "amlora": ("amlora", {}),
    "sapt-lora": ("sapt-lora", {}),
    "sapt-lora-noarm": ("sapt-lora", {"sapt-lora": {"arm": "none"}}),  # SAPT Table 2 "- ARM"
}


def row_config(scale: Scale, row: str, seed: int, root: Path, data_dir: str | None) -> RunConfig:
    """The configuration of one row's run with one seed: the scale's values (given, so they win over the preset),
    ``--preset paper`` for the rest."""
    method, options = ROWS[row]
    options = {name: dict(values) for name, values in options.items()}
    settings = dict(scale.settings)
    base = method.split("+")[0]
    if base == "seqft":
        settings["lr"] = FULL_FT_LR
    if base == "amlora":
        options.setdefault("amlora", {})["attention_samples"] = scale.attention_samples
    if base == "sapt-lora":
        options.setdefault("sapt-lora", {}).update(generator_steps=scale.generator_steps,
                                                   generator_max_tokens=settings["max_input_length"])
    return RunConfig.from_dict(dict(method=method, model=scale.model, seed=seed, preset="paper", data_dir=data_dir,
                                    keep_checkpoints="last", progress=False, method_options=options,
                                    output_dir=str(run_dir(root, row, seed)), **settings))


def run_dir(root: Path, row: str, seed: int) -> Path:
    return root / row / f"seed{seed}"


def run_one(scale: Scale, row: str, seed: int, root: Path, data_dir: str | None, log: bool = False) -> dict:
    """Run (or resume, or reuse if finished) one row with one seed; with ``log`` its output goes to
    <row>/seed<k>.log (several runs at a time)."""
    from continual_lm.train.assemble import prepare_run

    config = row_config(scale, row, seed, root, data_dir)
    out = run_dir(root, row, seed)
    prepared = prepare_run(config, output_dir=out, reuse=True, how_to_replace=f"remove {out} to run it again")
    if prepared.action == "reuse":
        return prepared.results
    print(f"[claims] {row}/seed{seed}: {'resuming' if prepared.action == 'resume' else 'starting'}", flush=True)
    if not log:
        results = prepared.start()
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f"seed{seed}.log", "a") as stream, contextlib.redirect_stdout(stream), \
                contextlib.redirect_stderr(stream):
            results = prepared.start()
    print(f"[claims] {row}/seed{seed}: done, AP {results['metrics']['AP']:.2f}", flush=True)
    return results


def is_finished(scale: Scale, row: str, seed: int, root: Path, data_dir: str | None) -> bool:
    """A finished run of this configuration is there (a finished run of another configuration is an error)."""
    from continual_lm.train.assemble import apply_preset, same_configuration

    out = run_dir(root, row, seed)
    if not (out / "results.json").exists():
        return False
    config, _ = apply_preset(row_config(scale, row, seed, root, data_dir))
    same_configuration(config, out, resume=False, how_to_replace=f"remove {out} to run it again")
    return True


def estimated_cost_s(scale: Scale, row: str, num_tasks: int) -> float:
    """CPU seconds (1 thread) of one run: training steps, the T(T+1)/2 task evaluations, SAPT's generators."""
    method, options = ROWS[row]
    base, *plugins = method.split("+")
    settings = scale.settings
    steps = num_tasks * math.ceil(settings["max_train_per_task"] / settings["batch_size"]) * settings["epochs"]
    step_s = scale.step_s * COST_FACTORS[base]
    if "migu" in plugins:
        step_s *= MIGU_FACTOR["full" if base == "seqft" else "lora"]
    evaluations = settings["max_test_per_task"] * num_tasks * (num_tasks + 1) // 2
    total = steps * step_s + evaluations * scale.eval_s
    if base == "sapt-lora" and options.get("sapt-lora", {}).get("arm", "kl") != "none":
        total += (num_tasks - 1) * scale.generator_steps * GENERATOR_FACTOR * scale.step_s
    if base == "amlora":
        total += 0.3 * scale.attention_samples * num_tasks * (num_tasks + 1) // 2 * scale.eval_s
    return total


# ---- what a run measures ---------------------------------------------------------------------------------------
@dataclass
class Run:
    results: dict
    routing: dict | None

    @property
    def tasks(self) -> list[str]:
        return self.results["tasks"]


def read_run(path: Path) -> Run | None:
    results = path / "results.json"
    if not results.exists():
        return None
    return Run(json.loads(results.read_text()), read_routing(path))


def plasticity(run: Run) -> float:
    """Mean diagonal a[j][j]: each task's score right after training it (learning accuracy)."""
    m = run.results["matrix"]
    return sum(m[j][j] for j in range(len(m))) / len(m)


def _routing_group(run: Run, names: tuple[str, ...]) -> str | None:
    if run.routing is None:
        return None
    return next((g for g in names if g in run.routing["groups"]), None)


def routing_at_end(key: str, groups: tuple[str, ...] = ("all",), earlier_only: bool = False) -> Callable:
    """Mean over tasks (or the tasks before the last) of their inputs' ``key`` after the stream."""
    def measure(run: Run) -> float | None:
        group = _routing_group(run, groups)
        if group is None:
            return None
        tasks = run.tasks[:-1] if earlier_only else run.tasks
        final = run.routing["after_task"][-1]["tasks"]
        return sum(final[t][group][key] for t in tasks) / len(tasks)
    return measure


def routing_drift(run: Run) -> float | None:
    """Mean over the tasks before the last of (share after the stream - share right after training the task)."""
    if _routing_group(run, ("all",)) is None:
        return None
    history = run.routing["after_task"]
    earlier = run.tasks[:-1]
    return sum(history[-1]["tasks"][t]["all"]["share"] - history[j]["tasks"][t]["all"]["share"]
               for j, t in enumerate(earlier)) / len(earlier)


MEASURES: dict[str, tuple[str, Callable[[Run], float | None]]] = {
    "AP": ("AP", lambda run: run.results["metrics"]["AP"]),
    "F.Ra": ("F.Ra", lambda run: run.results["metrics"]["F.Ra"]),
    "plasticity": ("mean a[j][j]", plasticity),
    "v_margin": ("v-projection routing margin at the end",
                 routing_at_end("margin", ("v_proj", "v"))),
    "q_margin": ("q-projection routing margin at the end",
                 routing_at_end("margin", ("q_proj", "q"))),
    "margin": ("routing margin at the end", routing_at_end("margin")),
    "earlier_share": ("routing share of the earlier tasks at the end", routing_at_end("share", earlier_only=True)),
    "drift": ("change of the earlier tasks' routing share since their own task", routing_drift),
}


# ---- the claims --------------------------------------------------------------------------------------------------
PAPERS = {
    "migu": "MIGU: Du et al. 2024, Unlocking Continual Learning Abilities in Language Models (arXiv:2406.17245)",
    "amlora": "AM-LoRA: Liu et al. 2024, Learning Attentional Mixture of LoRAs for Language Model Continual Learning "
              "(arXiv:2409.19611)",
    "sapt": "SAPT: Zhao et al. 2024, A Shared Attention Framework for Parameter-Efficient Continual Learning of Large "
            "Language Models (arXiv:2401.08295)",
}


@dataclass(frozen=True)
class Claim:
    """"measure(rows[0]) - measure(rows[1])" (or measure(rows[0]) alone) ``direction`` ``bound``, per seed."""
    key: str
    paper: str
    says: str  # the paper's words
    source: str  # section / table / figure
    rows: tuple[str, ...]
    measure: str  # a key of MEASURES
    direction: str  # greater | less
    bound: float = 0.0
    null_band: float | None = None  # |effect| below it counts as no effect
    unit: str = "points"
    needs_learning: bool = False  # forgetting means nothing for a row that did not learn its tasks (LEARNED_MARGIN)

    @property
    def quantity(self) -> str:
        name = MEASURES[self.measure][0]
        if len(self.rows) == 1:
            return f"{name} of {self.rows[0]}"
        return f"{name}: {self.rows[0]} − {self.rows[1]}"

    @property
    def rule(self) -> str:
        sign = ">" if self.direction == "greater" else "<"
        band = f"; not reproduced also inside ±{self.null_band:g}" if self.null_band is not None else ""
        return f"{sign} {self.bound:g}{band}"


AP_BAND = 1.0  # AP / F.Ra differences under 1 point (6 of 600 test answers) count as no effect
SHARE_BAND = 0.05  # routing shares: 5 points of the weight

MIGU_SAYS_AP = "\"our proposed approach (+MIGU) improves the performance of all five CL approaches\""
MIGU_SAYS_FORGET = ("\"Compared to baseline FT, our method learns a similar level of new code knowledge but exhibits "
                    "significantly less forgetting of previous knowledge\"")
CLAIMS = [
    *[Claim(f"migu-{b}-ap", "migu", MIGU_SAYS_AP, "§4.1 Results on T5, Table 1 (T5-large, standard CL and long)",
            (f"{b}+migu", b), "AP", "greater", null_band=AP_BAND) for b in ("seqlora", "inclora", "seqft")],
    *[Claim(f"migu-{b}-forgetting", "migu", MIGU_SAYS_FORGET, "§4.3 Forgetting Less and Learning the Same (Llama-2)",
            (f"{b}+migu", b), "F.Ra", "less", null_band=AP_BAND, needs_learning=True)
      for b in ("seqlora", "inclora", "seqft")],
    *[Claim(f"migu-{b}-plasticity", "migu", MIGU_SAYS_FORGET + ": the cost in plasticity is small (at most 3 points "
            "of the diagonal here)", "§4.3 Forgetting Less and Learning the Same (Llama-2)",
            (f"{b}+migu", b), "plasticity", "greater", bound=-3.0) for b in ("seqlora", "inclora", "seqft")],
    Claim("amlora-ap", "amlora", "\"our method significantly outperforms all continual learning baseline methods in "
          "order1\" (78.1 vs IncLoRA 66.0 on T5-large; 78.8 vs 74.5 on LLaMA2-7B)", "§4.4, Tables 1-2",
          ("amlora", "inclora"), "AP", "greater", null_band=AP_BAND),
    Claim("amlora-forgetting", "amlora", "IncLoRA shows \"a large drop in the performance of the first task\"; \"when "
          "model with AM-LoRA learns multiple tasks, the performance of the previous tasks can still be maintained at "
          "a high level\"", "§4.6 (RQ3), Figure 3", ("amlora", "inclora"), "F.Ra", "less", null_band=AP_BAND,
          needs_learning=True),
    Claim("amlora-value-routing", "amlora", "\"the AM-LoRA of the value matrix is more inclined to use the knowledge "
          "of LoRA of its own task\"", "§4.6, Figure 4", ("amlora",), "v_margin", "greater", unit="weight"),
    Claim("amlora-query-routing", "amlora", "\"the AM-LoRA bypassing the query matrix is more inclined to use the "
          "knowledge of LoRA of other tasks\"", "§4.6, Figure 4", ("amlora",), "q_margin", "less", unit="weight"),
    Claim("sapt-ap", "sapt", "SAPT-LoRA 51.54 vs SeqLoRA 6.43 AP (SuperNI), 82.02 vs 9.72 (Long Sequence)",
          "§6.1, Table 1", ("sapt-lora", "seqlora"), "AP", "greater", null_band=AP_BAND),
    Claim("sapt-forgetting-near-zero", "sapt", "SAPT-LoRA F.Ra 0.91 (SuperNI), 1.50 (Long Sequence): \"highest AP "
          "and lowest F.Ra\"", "§6.1, Table 1", ("sapt-lora",), "F.Ra", "less", bound=3.0, needs_learning=True),
    Claim("sapt-arm-ap", "sapt", "\"After removing the attentive reflection module (- ARM) ... the significant "
          "decline\": AP 51.54 -> 11.12", "§6.3, Table 2", ("sapt-lora", "sapt-lora-noarm"), "AP", "greater",
          null_band=AP_BAND),
    Claim("sapt-arm-forgetting", "sapt", "without ARM F.Ra 0.91 -> 42.83 (SuperNI)", "§6.3, Table 2",
          ("sapt-lora", "sapt-lora-noarm"), "F.Ra", "less", null_band=AP_BAND, needs_learning=True),
    Claim("sapt-arm-selection", "sapt", "ARM assists \"different input samples to recall the correct shared "
          "attention for the corresponding PET blocks they should originally combine\"", "§4.3, §6.3",
          ("sapt-lora", "sapt-lora-noarm"), "earlier_share", "greater", null_band=SHARE_BAND, unit="weight"),
    Claim("sapt-arm-keeps-selection", "sapt", "ARM \"ensures that inputs from previous tasks can still correctly "
          "perform the corresponding shared attention\" (here: the earlier tasks lose at most 0.1 of their own "
          "block's weight over the stream)", "§4.3", ("sapt-lora",), "drift", "greater", bound=-0.1, unit="weight"),
    Claim("sapt-selection", "sapt", "\"the correct PET blocks are supposed to be automatically selected\"; the "
          "train- and test-time heat maps \"nearly have the same layout\"", "§4.2 Attentive selection, §6.2, "
          "Figure 3", ("sapt-lora",), "margin", "greater", unit="weight"),
]


def claim_rows(claims: list[Claim]) -> list[str]:
    """The rows the claims need, each once, in ROWS order."""
    needed = {row for claim in claims for row in claim.rows}
    return [row for row in ROWS if row in needed]


LEARNED_MARGIN = 10.0  # a row learned its tasks if its mean a[j][j] is this many points above the mean chance level
NOT_LEARNED = "inconclusive at this scale (a row did not learn its tasks)"


def evaluate(claim: Claim, runs: dict[str, dict[int, Run]], chance: float | None = None) -> dict:
    """Per-row values over the seeds both rows finished, the (paired) interval and the verdict. ``chance``: the mean
    chance score of the tasks (None: unknown), against which a claim that ``needs_learning`` checks the rows."""
    measure = MEASURES[claim.measure][1]
    by_row = [runs.get(row, {}) for row in claim.rows]
    seeds = sorted(set.intersection(*(set(r) for r in by_row)))
    values = [[measure(r[s]) for s in seeds] for r in by_row]
    keep = [k for k in range(len(seeds)) if all(v[k] is not None for v in values)]
    seeds, values = [seeds[k] for k in keep], [[v[k] for k in keep] for v in values]
    out = {"claim": claim.key, "seeds": seeds, "rows": {row: v for row, v in zip(claim.rows, values)}}
    if not seeds:
        return {**out, "interval": None, "verdict": "not run"}
    interval = paired_interval(*values) if len(values) == 2 else mean_interval(values[0])
    decided = verdict(interval, claim.direction, claim.bound, claim.null_band)
    if claim.needs_learning and chance is not None:
        learned = [sum(plasticity(r[s]) for s in seeds) / len(seeds) for r in by_row]
        if min(learned) < chance + LEARNED_MARGIN:
            decided = NOT_LEARNED
    return {**out, "interval": interval.__dict__, "verdict": decided}


def chance_levels(scale: Scale, tasks: list[str], data_dir: str | None) -> dict[str, float | None]:
    """Per task the score of guessing a label uniformly (100 / number of labels; None: not a labelled task)."""
    from continual_lm.data.benchmarks import read_task

    levels = {}
    for name in tasks:
        task = read_task(scale.settings["benchmark"], data_dir, name)
        levels[name] = 100.0 / len(task.labels) if task.labels else None
    return levels


def mean_chance(levels: dict[str, float | None]) -> float | None:
    values = list(levels.values())
    return None if not values or None in values else sum(values) / len(values)


# ---- the report --------------------------------------------------------------------------------------------------
def read_runs(root: Path, rows: list[str]) -> dict[str, dict[int, Run]]:
    found = {}
    for row in rows:
        for path in sorted((root / row).glob("seed*")):
            run = read_run(path)
            if run is not None and path.name[4:].isdigit():
                found.setdefault(row, {})[int(path.name[4:])] = run
    return found


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    stats = mean_interval(values)
    return f"{stats.mean:.{digits}f} ± {stats.std:.{digits}f}"


def _interval_text(result: dict, digits: int) -> str:
    interval = result["interval"]
    if interval is None:
        return "–"
    if interval["low"] is None:
        return f"{interval['mean']:+.{digits}f} (1 seed: no interval)"
    return f"{interval['mean']:+.{digits}f} [{interval['low']:+.{digits}f}, {interval['high']:+.{digits}f}]"


def claims_markdown(scale_name: str, scale: Scale, claims: list[Claim], runs: dict[str, dict[int, Run]],
                    results: list[dict], chance: dict[str, float | None], invocations: list[dict] = ()) -> str:
    rows = claim_rows(claims)
    lines = [f"# Claims check (`python bench/claims.py --scale {scale_name}`)", "",
             "Generated by the script from the runs under `bench/runs/claims/" + scale_name + "/`. Does our "
             "implementation of each paper's method show the effect the paper reports? Each claim is a comparison "
             "between rows run with the same seeds; the interval is the 95 % Student-t interval of the mean "
             "difference paired by seed (one row: of its mean), and the verdict follows "
             "`continual_lm/eval/stats.py`: **reproduced** if the interval lies on the claimed side of the bound, "
             "**not reproduced** if it lies on the other side or inside the practically null band, **inconclusive "
             "at this scale** otherwise; a forgetting claim is inconclusive when a row's mean a[j][j] is less than "
             f"{LEARNED_MARGIN:g} points above chance (it did not learn what it could forget). Method pages: "
             "[MIGU](../docs/methods/migu.md), "
             "[AM-LoRA](../docs/methods/amlora.md), [SAPT](../docs/methods/sapt.md); the design of the check: "
             "[docs/claims.md](../docs/claims.md).", "",
             "## Summary", ""] + summary_table(claims, results) + [
             "", "## Protocol", "", f"{scale.description}; seeds {', '.join(map(str, scale.seeds))}; every run with "
             "`--preset paper` below these values. Where the protocol differs from the papers:", ""]
    lines += [f"- {d}" for d in scale.deviations] + [""]
    lines += ["## Verdicts", "",
              "| claim | the paper says | source | quantity | rows (mean ± std) | difference [95 % interval] | "
              "claimed | seeds | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- | ---: | --- |"]
    for claim, result in zip(claims, results):
        digits = 3 if claim.unit == "weight" else 2
        values = "; ".join(f"{row} {_pm(v, digits)}" for row, v in result["rows"].items()) or "–"
        lines.append(f"| {claim.key} | {claim.says} | {claim.source} | {claim.quantity} | {values} | "
                     f"{_interval_text(result, digits)} | {claim.rule} | {len(result['seeds'])} | "
                     f"**{result['verdict']}** |")
    lines += ["", "Papers: " + "; ".join(f"{k}: {v}" for k, v in PAPERS.items() if any(c.paper == k for c in claims)),
              ""]
    lines += ["## Rows", "",
              "Mean ± std over seeds. `a[j][j]` is each task's score right after its own training (did the row "
              "learn the task?), `final` its score after the whole stream.", "",
              "| row | seeds | AP | F.Ra | BWT | mean a[j][j] | a[j][j] per task | final per task | train (min) | "
              "eval (min) |", "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |"]
    for row in rows:
        found = list(runs.get(row, {}).values())
        if not found:
            lines.append(f"| {row} | 0 | – | – | – | – | – | – | – | – |")
            continue
        T = len(found[0].tasks)
        diag = " / ".join(_pm([r.results["matrix"][j][j] for r in found], 1) for j in range(T))
        final = " / ".join(_pm([r.results["matrix"][-1][j] for r in found], 1) for j in range(T))
        metric = {m: [r.results["metrics"][m] for r in found if r.results["metrics"][m] is not None]
                  for m in ("AP", "F.Ra", "BWT")}
        train = sum(r.results["timing"]["train_s"] for r in found) / len(found) / 60
        evaluation = sum(r.results["timing"]["eval_s"] for r in found) / len(found) / 60
        lines.append(f"| {row} | {len(found)} | {_pm(metric['AP'])} | {_pm(metric['F.Ra'])} | {_pm(metric['BWT'])} "
                     f"| {_pm([plasticity(r) for r in found])} | {diag} | {final} | {train:.1f} | "
                     f"{evaluation:.1f} |")
    levels = ", ".join(f"{t} {_fmt(v, 1)}" for t, v in chance.items())
    lines += ["", f"Tasks in order, with the score of guessing a label uniformly (chance): {levels}.", ""]
    lines += routing_markdown(rows, runs)
    if invocations:
        lines += invocations_markdown(invocations)
    return "\n".join(lines)


PAPER_LABELS = {"migu": "MIGU", "amlora": "AM-LoRA", "sapt": "SAPT"}


def summary_table(claims: list[Claim], results: list[dict]) -> list[str]:
    """The compact verdict table (the README quotes it verbatim: tests/test_claims.py)."""
    lines = ["| claim | paper | quantity | difference [95 % interval] | claimed | seeds | verdict |",
             "| --- | --- | --- | --- | --- | ---: | --- |"]
    for claim, result in zip(claims, results):
        digits = 3 if claim.unit == "weight" else 2
        lines.append(f"| {claim.key} | {PAPER_LABELS[claim.paper]} {claim.source.split(',')[0]} | {claim.quantity} | "
                     f"{_interval_text(result, digits)} | {claim.rule.split(';')[0]} | {len(result['seeds'])} | "
                     f"{result['verdict']} |")
    return lines


def routing_markdown(rows: list[str], runs: dict[str, dict[int, Run]]) -> list[str]:
    """Per selector row and group: each task's routing share after every task of the stream (mean ± std)."""
    lines = []
    for row in rows:
        found = [r for r in runs.get(row, {}).values() if r.routing is not None]
        if not found:
            continue
        if not lines:
            lines = ["## Routing accuracy over the stream", "",
                     "Share of a test input's selection weight on its own task's block (AM-LoRA: the selector "
                     "weights averaged over the input's tokens and the group's layers, over the zero LoRA and the "
                     "task LoRAs; SAPT: the instance-level attention over the blocks), mean over the task's test "
                     "inputs, then mean ± std over seeds; `continual_lm/eval/routing.py`.", ""]
        tasks = found[0].tasks
        for group in found[0].routing["groups"]:
            lines += [f"**{row}** ({group})", "", "| inputs of | " + " | ".join(f"after {t}" for t in tasks) + " |",
                      "| --- | " + " | ".join("---:" for _ in tasks) + " |"]
            for j, task in enumerate(tasks):
                cells = []
                for t in range(len(tasks)):
                    values = [r.routing["after_task"][t]["tasks"][task][group]["share"] for r in found
                              if t < len(r.routing["after_task"]) and task in r.routing["after_task"][t]["tasks"]]
                    cells.append(_pm(values, 3) if t >= j and values else "")
                lines.append(f"| {task} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


# ---- command line ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the scale's seeds")
    parser.add_argument("--papers", nargs="+", default=None, choices=sorted(PAPERS),
                        help="check only these papers' claims (and run only their rows)")
    parser.add_argument("--data-dir", default=os.environ.get("CONTINUAL_LM_DATA",
                                                             str(HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--runs-dir", default=str(HERE / "runs" / "claims"))
    parser.add_argument("--output", default=None, help="default: bench/CLAIMS.md (cpu), bench/CLAIMS-gpu.md (gpu)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run with --jobs > 1 (default: CPU count / jobs)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their estimated cost, then exit")
    parser.add_argument("--table-only", action="store_true", help="rewrite the result file from the finished runs")
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--jobs and --threads must be integers >= 1")
    scale = SCALES[args.scale]
    if args.seeds:
        scale = dataclasses.replace(scale, seeds=tuple(args.seeds))
    claims = [c for c in CLAIMS if args.papers is None or c.paper in args.papers]
    rows = claim_rows(claims)
    root = Path(args.runs_dir) / args.scale
    output = Path(args.output or HERE / scale.output)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    def write_report() -> None:
        runs = read_runs(root, rows)
        chance = chance_levels(scale, task_names(scale), args.data_dir)
        results = [evaluate(claim, runs, mean_chance(chance)) for claim in claims]
        atomic_write_text(output, claims_markdown(args.scale, scale, claims, runs, results, chance,
                                                  read_invocations(root)) + "\n")
        atomic_write_json(output.with_suffix(".json"), {
            "scale": args.scale, "protocol": scale.settings, "seeds": list(scale.seeds), "chance": chance,
            "claims": [{**c.__dict__, "quantity": c.quantity, "rule": c.rule, **r} for c, r in zip(claims, results)]})

    if args.table_only:
        write_report()
        return 0
    queue, total_s = [], 0.0
    num_tasks = len(task_names(scale))
    for row in rows:
        for seed in scale.seeds:
            if is_finished(scale, row, seed, root, args.data_dir):
                status = "finished"
            else:
                queue.append((row, seed))
                cost = estimated_cost_s(scale, row, num_tasks)
                total_s += cost
                status = f"to run, about {cost / 60:.0f} CPU-min"
            if args.dry_run:
                print(f"{run_dir(root, row, seed)}: {status}")
    parallel = min(args.jobs, os.cpu_count() or 1)
    print(f"[claims] {len(queue)} of {len(rows) * len(scale.seeds)} runs to do: about {total_s / 3600:.1f} hours of "
          f"one thread (estimate), {total_s / 3600 / parallel:.1f} h of wall time with --jobs {args.jobs} on an idle "
          f"machine")
    if args.dry_run:
        return 0
    start, started_at = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
    record = {"id": uuid.uuid4().hex, "started": started_at, "wall_s": 0.0, "jobs": args.jobs,
              "threads": threads if args.jobs > 1 else None, "runs": [f"{r}/seed{s}" for r, s in queue],
              "finished": [], "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}

    def finished(row, seed):
        record["finished"].append(f"{row}/seed{seed}")
        record["wall_s"] = round(time.perf_counter() - start, 1)
        record_invocation(root, record)
        write_report()

    def run_args(row, seed):
        return scale, row, seed, root, args.data_dir

    if queue:
        record_invocation(root, record)
    run_all(queue, run_args, args.jobs, threads, on_finish=finished, run=run_one)
    write_report()
    print(f"[claims] done in {(time.perf_counter() - start) / 60:.1f} min -> {output}")
    return 0


def task_names(scale: Scale) -> list[str]:
    if scale.settings.get("tasks"):
        return list(scale.settings["tasks"])
    from continual_lm.data.benchmarks import resolve_order

    return resolve_order(scale.settings["benchmark"], scale.settings.get("order"))


if __name__ == "__main__":
    raise SystemExit(main())
