"""Attention fallback and adapter detection."""

import importlib.util
import json
import warnings

import pytest
import torch

from fwdrev.modeling import adapter_base_model, is_adapter_dir, pick_attn_implementation


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available(),
                    reason="flash-attn and CUDA present: no fallback to test")
def test_flash_attention_falls_back_to_sdpa_with_one_warning():
    pick_attn_implementation.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pick_attn_implementation(True) == "sdpa"
        assert pick_attn_implementation(True) == "sdpa"
    messages = [str(w.message) for w in caught if "flash" in str(w.message)]
    assert len(messages) == 1 and "SDPA" in messages[0]  # one warning, naming the attention used
    assert pick_attn_implementation(False) == "sdpa"


def test_adapter_dir_detection(tmp_path):
    assert not is_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base"}))
    assert is_adapter_dir(tmp_path) and adapter_base_model(tmp_path) == "base"


def test_eval_mode_switches_off_dropout_and_autograd_and_restores_the_mode():
    from fwdrev.modeling import eval_mode

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    with eval_mode(model):
        assert not model.training and not model[1].training
        assert not model(torch.ones(1, 2)).requires_grad
    assert model.training and model[1].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("scoring failed")
    assert model.training  # restored on the way out of an error too
    with eval_mode(model.eval()):
        pass
    assert not model.training  # a model in eval mode stays there
