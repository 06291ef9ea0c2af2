"""Batched greedy decoding of test inputs, sharded across processes and gathered in order.

Inputs of several tasks share batches: an evaluation after task t of a 15-task stream (each task with a few test
examples) makes a handful of generate calls instead of one or more per task. Requests are grouped by their
generation length (``Collator.max_new_tokens`` of their task, so short classification answers never wait for long
generations), sorted by prompt length within a group (little padding) and cut into batches of ``batch_size``.
Every row carries its own task's prompt and, for methods that declare ``uses_task_id_at_test``, its own task id.
Each decoded text is cut to its answer by its own task's stop rule (``Task.answer.stop``: the first line, or the
whole text up to EOS, or a stop string), so tasks with different rules still share batches.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..data.collate import Collator
from ..data.tasks import Example, Task
from .scores import clean_prediction

Request = tuple[Task, int, str]  # (task whose prompt formats the input, its index in the stream or -1, input text)


def _batches(order: list[int], group: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive runs of ``order`` of at most ``batch_size`` items with one ``group`` value each."""
    batches: list[list[int]] = []
    for k in order:
        if batches and len(batches[-1]) < batch_size and group[batches[-1][0]] == group[k]:
            batches[-1].append(k)
        else:
            batches.append([k])
    return batches


@torch.no_grad()
def predict_requests(model, method, collator: Collator, requests: Sequence[Request], batch_size: int,
                     accelerator=None, progress: bool = True, desc: str = "eval") -> list[str]:
    """Greedy predictions for ``requests``, in order, each cut to its answer by its task's stop rule."""
    encoded = [collator.encode_prompt(task, Example(text, "")) for task, _, text in requests]
    max_new = [collator.max_new_tokens(task) for task, _, _ in requests]
    order = sorted(range(len(requests)), key=lambda k: (max_new[k], len(encoded[k].input_ids)))
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = order[rank::world]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: dict[int, str] = {}
    bar = tqdm(total=len(mine), desc=desc, unit="ex", leave=False, disable=not progress or rank != 0)
    for chunk in _batches(mine, max_new, batch_size):
        batch = {k: v.to(device) for k, v in collator.generation_batch([encoded[k] for k in chunk]).items()}
        if method.uses_task_id_at_test:
            batch["task_ids"] = torch.tensor([requests[k][1] for k in chunk], dtype=torch.long, device=device)
        output = method.generate(model, batch, max_new[chunk[0]])
        if not collator.is_seq2seq:
            output = output[:, batch["input_ids"].shape[1]:]
        texts = collator.tokenizer.batch_decode(output, skip_special_tokens=True)
        for k, text in zip(chunk, texts):
            results[k] = clean_prediction(text, requests[k][0].answer.stop)
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        merged: dict[int, str] = {}
        for part in gather_object([results]):
            merged.update(part)
        results = merged
    return [results[k] for k in range(len(requests))]

