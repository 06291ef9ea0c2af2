"""Reference runs: multi-task learning (the upper bound) and single-task training (the FWT reference).

Both train one kind of PET block, chosen with ``--mtl-pet`` / ``--single-pet``: ``lora`` (one LoRA on the target
projections), ``prompt`` (one soft prompt of ``--*-prompt-length`` tokens on the shared PromptBank, prepended to
the input embeddings as the prompt methods do) or ``full`` (every backbone weight). A method's FWT reference must
train the same kind of block as the method (``Method.pet_kind``); ``--single-task-from`` refuses another kind.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ContinualLMError
from ..models.prompt_bank import PromptBank, prompt_forward, prompt_generate
from .base import LoRAMethod, Phase, build_options

PET_KINDS = ("lora", "prompt", "full")


@dataclass
class ReferenceOptions:
    pet: str = "lora"  # lora | prompt | full: the kind of block trained (that of the method it is the reference for)
    prompt_length: int = 10  # soft-prompt tokens with pet = prompt (the prompt methods' default)

    def validate(self):  # shared by mtl and single, so the errors name both flags
        if self.pet not in PET_KINDS:
            raise ContinualLMError(f"--single-pet / --mtl-pet: expected one of {', '.join(PET_KINDS)}, "
                                   f"got {self.pet!r}")
        if isinstance(self.prompt_length, bool) or not isinstance(self.prompt_length, int) or self.prompt_length < 1:
            raise ContinualLMError(f"--single-prompt-length / --mtl-prompt-length: expected an integer >= 1, got "
                                   f"{self.prompt_length!r}")


class _Reference(LoRAMethod):
    Options = ReferenceOptions

    @classmethod
    def create(cls, config):
        options = build_options(cls.Options, cls.name, config.method_options)
        return (_PROMPT_VARIANTS[cls] if options.pet == "prompt" else cls)(config, options)

    @property
    def full_finetuning(self) -> bool:  # type: ignore[override]
        return self.options.pet == "full"

    @property
    def pet_kind(self) -> str:  # type: ignore[override]
        return self.options.pet

    def setup(self, model, backbone):
        if self.options.pet == "full":
            model.requires_grad_(True)
            return
        super().setup(model, backbone)
        self.add_task_lora()
        for bank in self.banks.values():
            bank.lora_A[0].requires_grad_(True)
            bank.lora_B[0].requires_grad_(True)


class _PromptBlock:
    """The ``pet = prompt`` variant of a reference: one soft prompt, the backbone frozen. A class of its own because
    a method with its own forward/generate is treated differently by the engines and continual pre-training."""

    soft_prompt_tuning = True  # the soft-prompt default learning rate, as the prompt methods

    def setup(self, model, backbone):
        model.requires_grad_(False)
        self.bank = PromptBank(model.get_input_embeddings(), self.options.prompt_length)
        model.add_module("reference_prompt", self.bank)  # checkpointed with the model's trainable parameters
        self.bank.add_prompt()

    def forward(self, model, batch):
        return prompt_forward(model, batch, self.bank.prompts[0])

    def generate(self, model, batch, max_new_tokens, **generate_kwargs):
        return prompt_generate(model, batch["input_ids"], batch["attention_mask"], self.bank.prompts[0],
                               max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, **generate_kwargs)


class MTL(_Reference):
    name = "mtl"
    description = "multi-task learning on all tasks jointly (upper reference; fills only the last matrix row)"
    uses_replay = True  # trains on every task's real examples at once (replay of everything)

    def schedule(self, num_tasks, eval_all_tasks):
        everything = tuple(range(num_tasks))
        return [Phase(num_tasks - 1, everything, everything)]


class Single(_Reference):
    name = "single"
    description = "each task trained alone from the base model (FWT reference; uses the task id at test)"
    uses_task_id_at_train = True  # a fresh block per task
    uses_task_id_at_test = True  # task j is evaluated with the model trained on task j

    def schedule(self, num_tasks, eval_all_tasks):
        return [Phase(i, (i,), (i,), reset=True) for i in range(num_tasks)]


class _PromptMTL(_PromptBlock, MTL):
    pass


class _PromptSingle(_PromptBlock, Single):
    pass


_PROMPT_VARIANTS = {MTL: _PromptMTL, Single: _PromptSingle}
