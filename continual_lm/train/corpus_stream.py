"""Continual pre-training streams (docs/continual_pretraining.md): which methods apply to corpus tasks, and the
stream's corpora cut into token blocks once the tokenizer is known."""
from __future__ import annotations

from ..config import RunConfig
from ..data.stream import Stream
from ..data.tasks import CORPUS, Task
from ..errors import ContinualLMError
from ..methods.base import Method, overrides


def applies_to_corpus_tasks(cls: type[Method]) -> bool:
    """``cls.supports_corpus_tasks``, or where it is None: whether the method trains and generates through the model
    itself (a method with its own forward/generate, e.g. soft prompts, keeps knowledge the end-task classifier, a
    copy of the model's body, would not see)."""
    if cls.supports_corpus_tasks is not None:
        return cls.supports_corpus_tasks
    return not overrides(cls, "forward") and not overrides(cls, "generate")


def check_corpus_method(method: Method, tasks: list[Task]) -> None:
    """Refuse a method or plugin that makes no sense on the stream's corpus tasks (continual pre-training)."""
    from ..methods.registry import METHODS, method_class

    corpus = [t.name for t in tasks if t.kind == CORPUS]
    for part in getattr(method, "parts", [method]) if corpus else []:
        if not applies_to_corpus_tasks(type(part)):
            usable = [name for name in METHODS if applies_to_corpus_tasks(method_class(name))]
            raise ContinualLMError(
                f"task {corpus[0]!r} is an unlabelled corpus (continual pre-training) and method {part.name!r} does "
                f"not apply to it; methods that do: {', '.join(usable)} (docs/continual_pretraining.md)")


def corpus_tasks_in_blocks(stream: Stream, backbone, config: RunConfig) -> list[Task]:
    """The stream with each corpus task's documents cut into token blocks of --max-input-length tokens (special
    tokens included), after checking that the model can train the stream's tasks."""
    corpus = [t.name for t in stream.tasks if t.kind == CORPUS]
    labelled = [t.name for t in stream.tasks + stream.unseen if t.kind != CORPUS]
    if backbone.is_encoder_only and (labelled or config.general_tasks):
        what = f"task(s) {', '.join(labelled)}" if labelled else "--general-tasks (lm-eval)"
        raise ContinualLMError(f"model {config.model!r} is encoder-only (a masked LM): it cannot generate answers for "
                               f"{what}; it trains only corpus tasks (continual pre-training)")
    if corpus and backbone.is_seq2seq:
        raise ContinualLMError(f"task {corpus[0]!r} is a corpus (continual pre-training): it needs a decoder-only "
                               f"(causal LM) or encoder-only (masked LM) model, not the encoder-decoder {config.model!r}")
    from ..data.corpus import corpus_block_task

    block_size = config.max_input_length - backbone.tokenizer.num_special_tokens_to_add()
    return [corpus_block_task(t, backbone.tokenizer, block_size) if t.kind == CORPUS else t for t in stream.tasks]
