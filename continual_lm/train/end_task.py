"""End-task evaluation of continual pre-training (the DAS protocol): fine-tune a *copy* of the current model with a
classification head on a domain's labelled end task, and report accuracy and macro-F1 on its test set.

    scores = end_task_scores(model, tokenizer, train, test, num_labels=3)   # {"accuracy": 71.2, "macro_f1": 68.9}

``train``/``test`` are (text, label index) pairs. The head reads the mean of the body's last hidden states over
the non-padding tokens (the body is ``model.base_model``, the encoder of an encoder-decoder); the body trains too
(``train_body=True``, as DAS fine-tunes RoBERTa) or stays frozen (a linear probe). The model passed in is never
changed (its forward hooks, e.g. MIGU's statistics, are not run by the copy; the global RNG is left as it was).
Scores are on the 0..100 scale. ``corpus_task_scores`` scores a corpus ``Task`` of a stream YAML (the loop calls
it after every phase for each domain seen so far).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..data.tasks import Task
from ..errors import ContinualLMError


def macro_f1(predictions: list[int], references: list[int], num_labels: int) -> float:
    """Unweighted mean over the classes of F1 = 2 TP / (2 TP + FP + FN), 0..100; a class absent from both the
    predictions and the references counts as F1 = 0 (as scikit-learn's f1_score(average="macro") with labels)."""
    scores = []
    for label in range(num_labels):
        tp = sum(p == label and r == label for p, r in zip(predictions, references))
        fp = sum(p == label and r != label for p, r in zip(predictions, references))
        fn = sum(p != label and r == label for p, r in zip(predictions, references))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return 100.0 * sum(scores) / num_labels


class SequenceClassifier(nn.Module):
    """A model's body + a linear head over mean-pooled last hidden states."""

    def __init__(self, model: nn.Module, num_labels: int):
        super().__init__()
        is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.body = model.get_encoder() if is_encoder_decoder else model.base_model
        hidden = getattr(model.config, "hidden_size", None) or model.config.d_model
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return self.head((states * mask).sum(1) / mask.sum(1).clamp(min=1))


def end_task_scores(model: nn.Module, tokenizer, train: list[tuple[str, int]], test: list[tuple[str, int]],
                    num_labels: int, *, epochs: int = 3, lr: float = 1e-3, batch_size: int = 16,
                    max_length: int = 128, train_body: bool = True, seed: int = 0) -> dict[str, float]:
    """Fine-tune a copy of ``model`` with a classification head on ``train``; accuracy and macro-F1 on ``test``."""
    if not train or not test:
        raise ContinualLMError("end task: expected non-empty train and test sets of (text, label) pairs")
    bad = [label for _, label in train + test if not 0 <= label < num_labels]
    if bad:
        raise ContinualLMError(f"end task: label {bad[0]} is outside 0..{num_labels - 1}")
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _fine_tune_and_score(model, tokenizer, train, test, num_labels, epochs=epochs, lr=lr,
                                    batch_size=batch_size, max_length=max_length, train_body=train_body, seed=seed)


def _without_hooks(model: nn.Module) -> nn.Module:
    """A deep copy whose modules run no forward/backward hooks: the copied hooks still point at the run's objects
    (MIGU's magnitude statistics) and would record the end-task fine-tuning there."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        module._backward_hooks.clear()
    return copied


def _fine_tune_and_score(model, tokenizer, train, test, num_labels, *, epochs, lr, batch_size, max_length,
                         train_body, seed) -> dict[str, float]:
    device = next(model.parameters()).device
    classifier = SequenceClassifier(_without_hooks(model), num_labels).to(device)
    for param in classifier.body.parameters():
        param.requires_grad_(train_body)

    def encode(pairs):
        batch = tokenizer([text for text, _ in pairs], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length)
        return batch.input_ids.to(device), batch.attention_mask.to(device)

    optimizer = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=lr)
    order = torch.Generator().manual_seed(seed)
    classifier.train()
    for _ in range(epochs):
        shuffled = torch.randperm(len(train), generator=order).tolist()
        for start in range(0, len(train), batch_size):
            pairs = [train[k] for k in shuffled[start:start + batch_size]]
            input_ids, attention_mask = encode(pairs)
            target = torch.tensor([label for _, label in pairs], device=device)
            loss = nn.functional.cross_entropy(classifier(input_ids, attention_mask), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    classifier.eval()
    predictions: list[int] = []
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            predictions += classifier(*encode(test[start:start + batch_size])).argmax(-1).tolist()
    references = [label for _, label in test]
    accuracy = 100.0 * sum(p == r for p, r in zip(predictions, references)) / len(references)
    return {"accuracy": round(accuracy, 4), "macro_f1": round(macro_f1(predictions, references, num_labels), 4)}


def corpus_task_scores(model: nn.Module, tokenizer, task: Task, *, max_length: int, seed: int) -> dict[str, float]:
    """The end task of a corpus task (``task.extra["end_task"]``: train examples, labels and optional epochs / lr /
    batch_size / train_body), tested on ``task.test``: {"accuracy", "macro_f1"}."""
    end = task.extra["end_task"]
    labels = end["labels"]
    settings = {key: value for key, value in end.items() if key not in ("train", "labels")}  # the reader checked them

    def pairs(examples):
        return [(ex.input, labels.index(ex.target)) for ex in examples]

    return end_task_scores(model, tokenizer, pairs(end["train"]), pairs(task.test), len(labels),
                           max_length=max_length, seed=seed, **settings)
