"""PromptBank: initialisation, combination, and prepending for training and generation (causal and seq2seq)."""
import pytest
import torch

from continual_lm.models.backbone import load_backbone
from continual_lm.models.prompt_bank import PromptBank, prepend_prompt, prompt_forward, prompt_generate


@pytest.fixture(scope="module", params=["tiny-random-llama", "tiny-random-t5"])
def backbone(request):
    torch.manual_seed(0)
    return load_backbone(request.param, seed=0)


def test_prompts_start_from_vocabulary_embeddings_and_combine(backbone):
    embedding = backbone.model.get_input_embeddings()
    bank = PromptBank(embedding, length=5)
    assert [bank.add_prompt() for _ in range(3)] == [0, 1, 2]
    assert not any(p is embedding.weight for p in bank.parameters()) and len(list(bank.parameters())) == 3
    for prompt in bank.prompts:
        assert prompt.shape == (5, bank.hidden_size)
        matches = (prompt.detach()[:, None, :] == embedding.weight.detach()[None]).all(-1)
        assert matches.any(dim=1).all()  # every prompt row is exactly a vocabulary row
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    mixed = bank.weighted(weights)
    assert torch.equal(mixed[0], bank.prompts[0])
    assert torch.allclose(mixed[1], 0.25 * bank.prompts[0] + 0.25 * bank.prompts[1] + 0.5 * bank.prompts[2])
    gathered = bank.gather(torch.tensor([[1, 2], [0, 0]]))
    assert torch.equal(gathered[0], torch.cat([bank.prompts[1], bank.prompts[2]]))
    bank.remove_last()
    assert bank.num_prompts == 2


def test_a_bank_starts_with_prompts_and_grows_with_the_earlier_ones_frozen(backbone):
    embedding = backbone.model.get_input_embeddings()
    bank = PromptBank(embedding, length=2, prompts=2)
    assert bank.num_prompts == 2 and all(p.requires_grad for p in bank.prompts)
    torch.manual_seed(1)
    assert bank.add_prompt(freeze_earlier=True) == 2
    assert [p.requires_grad for p in bank.prompts] == [False, False, True]
    torch.manual_seed(1)  # the same draw as add_prompt() without freezing: freezing changes no value
    plain = PromptBank(embedding, length=2)
    plain.add_prompt()
    assert torch.equal(plain.prompts[0], bank.prompts[2])


def test_prepend_extends_mask_and_causal_labels(backbone):
    model = backbone.model
    bank = PromptBank(model.get_input_embeddings(), length=4)
    bank.add_prompt()
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    labels = torch.tensor([[-100, -100, 7], [-100, 9, 10]])
    inputs = prepend_prompt(model, ids, mask, bank.prompts[0], labels)
    assert inputs["inputs_embeds"].shape == (2, 7, bank.hidden_size)
    assert torch.equal(inputs["inputs_embeds"][0, :4], bank.prompts[0].detach())
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 1, 1], [1] * 7]
    if backbone.is_seq2seq:
        assert torch.equal(inputs["labels"], labels)  # decoder side: unchanged
    else:
        assert inputs["labels"].tolist() == [[-100] * 6 + [7], [-100] * 5 + [9, 10]]


def test_prompt_equal_to_token_embeddings_matches_plain_token_inputs(backbone):
    """A prompt made of the embeddings of some tokens behaves exactly like those tokens prepended as ids, in the
    training forward and in generate (which therefore accepts inputs_embeds for both model kinds)."""
    model = backbone.model.eval()
    prefix = torch.tensor([11, 12, 13])
    prompt = model.get_input_embeddings()(prefix).detach()
    ids = torch.tensor([[20, 21, 22, 23], [30, 31, 32, 33]])
    mask = torch.ones_like(ids)
    full = torch.cat([prefix.expand(2, -1), ids], dim=1)
    plain_labels = ids if backbone.is_seq2seq else torch.cat([torch.full((2, 3), -100), ids], dim=1)
    with torch.no_grad():
        plain = model(input_ids=full, attention_mask=torch.ones_like(full), labels=plain_labels)
        prompted = prompt_forward(model, {"input_ids": ids, "attention_mask": mask, "labels": ids}, prompt)
        assert torch.allclose(plain.loss, prompted.loss, atol=1e-5)
        expected = model.generate(input_ids=full, attention_mask=torch.ones_like(full), max_new_tokens=4,
                                  do_sample=False)
        got = prompt_generate(model, ids, mask, prompt, max_new_tokens=4, do_sample=False)
        scores = dict(max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
        plain_scores = model.generate(input_ids=full, attention_mask=torch.ones_like(full), **scores).scores
        prompted_scores = model.generate(**prepend_prompt(model, ids, mask, prompt), **scores).scores
    for a, b in zip(plain_scores, prompted_scores, strict=True):  # same next-token distributions at every step
        assert torch.allclose(a, b, atol=1e-4)
    if backbone.is_seq2seq:
        assert torch.equal(got, expected)
    else:  # the same new tokens, after the caller's input ids (what generate(input_ids=...) returns)
        assert torch.equal(got[:, :4], ids) and torch.equal(got[:, 4:], expected[:, 7:])
