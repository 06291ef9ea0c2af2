import pytest
import torch
from torch import nn

from continual_lm.errors import ContinualLMError
from continual_lm.models.inject import find_lora_banks, inject_lora_banks
from continual_lm.models.lora_bank import LoRABank


def _bank(T=3, seed=0):
    torch.manual_seed(seed)
    bank = LoRABank(nn.Linear(6, 5), r=2, alpha=4, dropout=0.0)
    for _ in range(T):
        bank.add_lora()
        nn.init.normal_(bank.lora_B[-1])
    return bank


def test_no_lora_is_the_base_layer():
    bank = LoRABank(nn.Linear(6, 5), r=2, alpha=4, dropout=0.0)
    x = torch.randn(2, 3, 6)
    assert torch.equal(bank(x), bank.base(x))


def test_new_lora_starts_as_a_no_op():
    bank = LoRABank(nn.Linear(6, 5), r=2, alpha=4, dropout=0.0)
    bank.add_lora()
    x = torch.randn(2, 3, 6)
    assert torch.equal(bank(x), bank.base(x))


def test_stacked_forward_equals_sum_of_separate_loras():
    bank = _bank(T=4)
    x = torch.randn(2, 3, 6)
    expected = bank.base(x) + sum((x @ A.T) @ B.T for A, B in zip(bank.lora_A, bank.lora_B)) * bank.scaling
    torch.testing.assert_close(bank(x), expected)
    torch.testing.assert_close(bank.delta_weight(), sum(B @ A for A, B in zip(bank.lora_A, bank.lora_B)) * 2.0)


class OneHot(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.index = index

    def forward(self, bank, x, xa):
        w = torch.zeros(*xa.shape[:-1])
        w[..., self.index] = 1.0
        return w


def test_mixer_weights_select_loras():
    bank = _bank(T=3)
    x = torch.randn(2, 3, 6)
    bank.mixer = OneHot(1)
    expected = bank.base(x) + (x @ bank.lora_A[1].T) @ bank.lora_B[1].T * bank.scaling
    torch.testing.assert_close(bank(x), expected)


def test_inject_replaces_only_targets_and_errors_name_the_option():
    model = nn.Sequential()
    model.add_module("attn", nn.Module())
    model.attn.q_proj = nn.Linear(4, 4)
    model.attn.k_proj = nn.Linear(4, 4)
    banks = inject_lora_banks(model, ["q_proj"], r=2, alpha=4, dropout=0.0)
    assert list(banks) == ["attn.q_proj"]
    assert isinstance(model.attn.q_proj, LoRABank) and isinstance(model.attn.k_proj, nn.Linear)
    assert find_lora_banks(model) == banks
    with pytest.raises(ContinualLMError, match="lora-targets.*k_proj"):
        inject_lora_banks(model, ["nonexistent"], r=2, alpha=4, dropout=0.0)
