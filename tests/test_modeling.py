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
