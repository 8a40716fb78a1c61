"""The chunked head reproduces the model's own logits for every architecture that post-processes
them (soft-cap, logit scale), and refuses a model whose logits it cannot reproduce."""

import shutil
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
import transformers
from helpers import REPO_ROOT, script_env

from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.logprobs import sequence_logprobs

SMALL = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=False)
SOFTCAP = dict(final_logit_softcapping=2.0)
GRANITE = dict(logits_scaling=4.0)
# One tiny config per family, with its post-processing strong enough to change the log-probs.
FAMILIES = {
    "Gemma2ForCausalLM": dict(SOFTCAP, head_dim=8),
    "Gemma3ForCausalLM": dict(SOFTCAP, head_dim=8),
    "Gemma4ForCausalLM": dict(SOFTCAP, head_dim=8),
    "VaultGemmaForCausalLM": dict(SOFTCAP, head_dim=8),
    "NanoChatForCausalLM": SOFTCAP,
    "BeamForCausalLM": SOFTCAP,
    "Inkling2ForCausalLM": SOFTCAP,
    "RecurrentGemmaForCausalLM": dict(logits_soft_cap=2.0, num_hidden_layers=3, num_key_value_heads=1, lru_width=32,
                                      attention_window_size=8, head_dim=8),
    "CohereForCausalLM": dict(logit_scale=0.25),
    "Cohere2ForCausalLM": dict(logit_scale=0.25),
    "Cohere2MoeForCausalLM": dict(logit_scale=0.25),
    "GraniteForCausalLM": GRANITE,
    "GraniteSWAForCausalLM": GRANITE,
    "GraniteMoeForCausalLM": GRANITE,
    "GraniteMoeSWAForCausalLM": GRANITE,
    "GraniteMoeSharedForCausalLM": GRANITE,
    "GraniteMoeHybridForCausalLM": dict(GRANITE, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1,
                                        mamba_expand=2, layer_types=["mamba", "attention"]),
    # logits_scaling = hidden_size / dim_model_base = 4
    "MiniCPM3ForCausalLM": dict(dim_model_base=8, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                                qk_rope_head_dim=8, v_head_dim=8, num_key_value_heads=4),
    "HyperCLOVAXForCausalLM": GRANITE,
    "FalconH1ForCausalLM": dict(lm_head_multiplier=4.0, num_hidden_layers=1, mamba_d_ssm=32, mamba_n_heads=4,
                                mamba_d_head=8, mamba_d_state=8, mamba_chunk_size=8),
}


def tiny_model(class_name: str, **overrides):
    """A seeded tiny model of ``class_name`` whose head gives logits of a few nats (a random init's
    are ~0.1, where a scale or soft-cap would hardly change the log-probs)."""
    model_class = getattr(transformers, class_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = model_class.config_class(**{**SMALL, **FAMILIES[class_name], **overrides})
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, 1.0)
    return model


def own_logprob_sums(model, input_ids):
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=input_ids).logits.float(), -1)
    return logps[:, :-1].gather(-1, input_ids[:, 1:, None])[..., 0].sum(-1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("class_name", sorted(FAMILIES))
def test_chunked_head_reproduces_the_models_own_logits(class_name):
    model = tiny_model(class_name)
    torch.manual_seed(1)
    input_ids = torch.randint(0, 101, (2, 10))
    expected = own_logprob_sums(model, input_ids)
    labels, mask = input_ids.clone(), torch.ones_like(input_ids)
    with torch.no_grad():  # scoring: the frozen-head path
        scored = sequence_logprobs(model, input_ids, mask, labels, chunk_size=4).sum
    assert scored.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    model.get_output_embeddings().requires_grad_(False)  # LoRA training: frozen head, with gradients
    frozen = sequence_logprobs(model, input_ids, mask, labels, chunk_size=4).sum
    model.get_output_embeddings().requires_grad_(True)  # full fine-tuning: the checkpointed path
    trainable = sequence_logprobs(model, input_ids, mask, labels, chunk_size=4).sum
    assert frozen.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert trainable.tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_load_check_passes_the_known_families():
    from fwdrev.output_head import check_output_head, output_head

    model = tiny_model("Gemma2ForCausalLM")
    check_output_head(model)
    assert output_head(model).softcap == 2.0 and output_head(model).scale == 1.0
    assert output_head(tiny_model("GraniteForCausalLM")).scale == 0.25
    assert output_head(tiny_model("CohereForCausalLM")).scale == 0.25


def test_a_model_that_post_processes_its_logits_unknown_to_us_is_refused():
    from fwdrev.cli import UsageError
    from fwdrev.output_head import check_output_head

    class FutureGemmaForCausalLM(transformers.Gemma2ForCausalLM):  # soft-caps, but not in our table
        pass

    model = tiny_model("Gemma2ForCausalLM")
    model.__class__ = FutureGemmaForCausalLM
    with pytest.raises(UsageError, match=r"'gemma2' \(FutureGemmaForCausalLM\).*does not reproduce"):
        check_output_head(model)


@pytest.mark.parametrize("model_type", ["bert", "git"])
def test_known_unsupported_architectures_are_refused_by_name(model_type):
    from fwdrev.cli import UsageError
    from fwdrev.output_head import output_head

    model = tiny_model("Gemma2ForCausalLM")
    model.config.model_type = model_type  # the table is looked up by model type
    with pytest.raises(UsageError, match=f"model type '{model_type}'"):
        output_head(model)


def save_with_the_tiny_tokenizer(model, tiny_model_dir, model_dir):
    model.save_pretrained(model_dir)
    for item in tiny_model_dir.iterdir():
        if item.name not in ("config.json", "generation_config.json", "model.safetensors"):
            shutil.copy(item, model_dir / item.name)


def analyze(model_dir, tmp_path) -> subprocess.CompletedProcess:
    generate_preference_rows(4, seed=4).to_parquet(tmp_path / "rows.parquet")
    return subprocess.run([sys.executable, "analysis/analyze_dpo_model.py", "--model_path", str(model_dir),
                           "--dataset_path", str(tmp_path / "rows.parquet"), "--max_tokens", "8",
                           "--output_dir", str(tmp_path / "out")],
                          cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=300)


def test_tiny_gemma2_loads_without_sdpa_and_scores_through_the_analysis(tiny_model_dir, tmp_path):
    """Gemma-2 has no SDPA in transformers 5.24: it loads with eager attention (one warning) and
    the analysis scores it (exit 0)."""
    from fwdrev.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = tiny_model("Gemma2ForCausalLM", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    save_with_the_tiny_tokenizer(model, tiny_model_dir, tmp_path / "tiny-gemma2")
    result = analyze(tmp_path / "tiny-gemma2", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Gemma2ForCausalLM does not support sdpa attention; using eager" in result.stderr
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert len(scores) == 4 and scores["chosen_logp_sum"].notna().all()


def test_the_analysis_refuses_a_model_it_cannot_score_with_exit_2(tiny_model_dir, tmp_path):
    from fwdrev.modeling import load_tokenizer

    config = transformers.BertConfig(vocab_size=len(load_tokenizer(str(tiny_model_dir))), hidden_size=32,
                                     num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                     is_decoder=True)
    save_with_the_tiny_tokenizer(transformers.BertLMHeadModel(config), tiny_model_dir, tmp_path / "tiny-bert")
    result = analyze(tmp_path / "tiny-bert", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model type 'bert'" in result.stderr
