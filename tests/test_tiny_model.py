"""Tiny offline Qwen2 model + tokenizer: save/reload, special tokens, chat template, byte-level coverage."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fwdrev.devtools.synthetic import ASSISTANT_HEADER
from fwdrev.devtools.tiny_model import SPECIAL_TOKENS, build_tiny_model, train_tokenizer

SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def sample_frame(repo_root):
    return pd.read_parquet(repo_root / "data-100samples.parquet")


def test_reloaded_model_gives_identical_logits(tmp_path, sample_frame):
    tokenizer = train_tokenizer(sample_frame["text"], vocab_size=512)
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, seed=1)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)

    batch = reloaded_tokenizer(list(sample_frame["text"][:3]), padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == tokenizer(list(sample_frame["text"][:3]), padding=True)["input_ids"]
    with torch.no_grad():
        expected, actual = model(**batch).logits, reloaded(**batch).logits
    assert actual.shape == (3, batch["input_ids"].shape[1], len(tokenizer))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_default_config_is_small_untied_and_fits_long_rows(tiny_model_dir, tokenizer):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["tie_word_embeddings"] is False
    assert config["vocab_size"] == len(tokenizer)
    assert config["max_position_embeddings"] == 32768
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 4)
    assert (config["eos_token_id"], config["pad_token_id"]) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert (tiny_model_dir / "model.safetensors").stat().st_size < 10 * 2**20


def test_special_tokens_are_single_ids_with_qwen_roles(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    assert ids == [0, 1, 2, 3]
    for token, token_id in zip(SPECIAL_TOKENS, ids):
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]
    assert tokenizer.pad_token == "<|fim_pad|>" and tokenizer.pad_token_id == 3
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    header_ids = tokenizer(ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]
    assert header_ids[0] == 1 and tokenizer.decode(header_ids) == ASSISTANT_HEADER
    # No BOS/EOS is added around plain text (Qwen behaviour).
    assert tokenizer("7 + 3 = 10")["input_ids"] == tokenizer("7 + 3 = 10", add_special_tokens=False)["input_ids"]


def test_chat_template_renders_qwen_format(tokenizer):
    user = [{"role": "user", "content": "Start with 7. Add 3. What is the result?"}]
    rendered = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert rendered == (SYSTEM + "<|im_start|>user\nStart with 7. Add 3. What is the result?<|im_end|>\n"
                        + ASSISTANT_HEADER)
    with_system = [{"role": "system", "content": "Be brief."}, *user, {"role": "assistant", "content": "10"}]
    assert tokenizer.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nStart with 7. Add 3. What is the result?<|im_end|>\n"
        "<|im_start|>assistant\n10<|im_end|>\n"
    )


def test_sample_prompts_match_the_chat_template_and_responses_are_short(tokenizer, sample_frame):
    for row in sample_frame.to_dict("records"):
        prompt, answer = row["text"].split(ASSISTANT_HEADER, 1)
        question_column = "question" if row["sample_type"] == "original" else "relevant-question"
        user = [{"role": "user", "content": row[question_column]}]
        rendered = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        assert prompt + ASSISTANT_HEADER == rendered
        assert 40 <= len(tokenizer(answer)["input_ids"]) <= 120
        assert tokenizer.decode(tokenizer(row["text"])["input_ids"]) == row["text"]


def test_tokenizer_round_trips_real_rows(tokenizer, shared_sample_path):
    real = pd.read_parquet(shared_sample_path)
    for text in pd.concat([real["text"], real["worse-text"]]):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == text.count("<|im_start|>")
        assert len(ids) < 32768


def test_tokenizer_training_is_deterministic(sample_frame):
    first = train_tokenizer(sample_frame["text"], vocab_size=300)
    second = train_tokenizer(sample_frame["text"], vocab_size=300)
    assert len(first) == len(second) == 300
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_cli_builds_a_loadable_model(repo_root, tmp_path):
    output_dir = tmp_path / "tiny"
    subprocess.run([sys.executable, "scripts/make_tiny_model.py", "--data", "data-100samples.parquet",
                    "--output_dir", str(output_dir), "--hidden_size", "32", "--num_layers", "1",
                    "--num_heads", "2", "--num_kv_heads", "1", "--intermediate_size", "64"],
                   cwd=repo_root, check=True, capture_output=True)
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == len(tokenizer)
    ids = tokenizer("Start with 7.", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
