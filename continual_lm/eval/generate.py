"""Batched greedy decoding of a task's test inputs, sharded across processes and gathered in order."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data.collate import Collator
from ..data.tasks import Task
from .scores import clean_prediction


@torch.no_grad()
def predict_texts(model, method, collator: Collator, task: Task, task_index: int, inputs: list[str],
                  batch_size: int, accelerator=None, progress: bool = True, desc: str = "") -> list[str]:
    """Greedy predictions (cleaned) for ``inputs``, in order. The task id reaches the method only if it declares
    ``uses_task_id_at_test``."""
    from ..data.tasks import Example

    encoded = [collator.encode_prompt(task, Example(text, "")) for text in inputs]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k].input_ids))  # length-sorted batches
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = order[rank::world]
    device = next(model.parameters()).device
    max_new = collator.max_new_tokens(task)
    was_training = model.training
    model.eval()
    results: dict[int, str] = {}
    bar = tqdm(total=len(mine), desc=desc or f"eval {task.name}", unit="ex", leave=False,
               disable=not progress or rank != 0)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collator.generation_batch([encoded[k] for k in chunk]).items()}
        if method.uses_task_id_at_test:
            batch["task_ids"] = torch.full((len(chunk),), task_index, dtype=torch.long, device=device)
        output = method.generate(model, batch, max_new)
        if not collator.is_seq2seq:
            output = output[:, batch["input_ids"].shape[1]:]
        texts = collator.tokenizer.batch_decode(output, skip_special_tokens=True)
        for k, text in zip(chunk, texts):
            results[k] = clean_prediction(text)
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        merged: dict[int, str] = {}
        for part in gather_object([results]):
            merged.update(part)
        results = merged
    return [results[k] for k in range(len(inputs))]
