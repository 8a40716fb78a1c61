"""The output head of a causal LM as its own forward applies it: logits = softcap(scale * W h).

``fwdrev.logprobs`` applies the head itself, chunk by chunk, instead of calling the model's
forward. Some architectures post-process the head's output there (Gemma-2/3 soft-cap it, Cohere
and Granite scale it), so the head alone gives other log-probs. ``output_head`` describes each
architecture's step once (``scale``, ``softcap``) and refuses those whose step is something else;
``check_output_head`` compares our logits with the model's own forward on a short input, which
also catches architectures added to transformers after this table was written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fwdrev.errors import UsageError

# Classes whose forward soft-caps the logits with the (text) config's final_logit_softcapping.
SOFTCAP_CLASSES = {
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3nForCausalLM", "Gemma3nForConditionalGeneration",
    "Gemma4ForCausalLM", "Gemma4ForConditionalGeneration", "Gemma4UnifiedForCausalLM",
    "Gemma4UnifiedForConditionalGeneration", "VaultGemmaForCausalLM", "NanoChatForCausalLM",
    "BeamForCausalLM", "Inkling2ForCausalLM", "Inkling2LoopForCausalLM",
}
# Classes whose forward multiplies the logits by their ``logit_scale`` attribute.
LOGIT_SCALE_CLASSES = {
    "CohereForCausalLM", "Cohere2ForCausalLM", "Cohere2MoeForCausalLM", "CohereCompassForCausalLM",
}
# Classes whose forward divides the logits (MiniCPM3: the hidden states, the same for a
# bias-free head) by config.logits_scaling.
DIVIDED_BY_LOGITS_SCALING = {
    "GraniteForCausalLM", "GraniteSWAForCausalLM", "GraniteMoeForCausalLM", "GraniteMoeSWAForCausalLM",
    "GraniteMoeHybridForCausalLM", "GraniteMoeSharedForCausalLM", "MiniCPM3ForCausalLM",
}
# Model types whose forward computes its logits other than softcap(scale * W h) (transformers 5.24).
REFUSED_MODEL_TYPES = {
    "inkling_text": "slices its logits to unpadded_vocab_size",
    "inkling": "slices its logits to unpadded_vocab_size",
    "gemma4_assistant": "masks its output embedding",
    "gemma4_unified_assistant": "masks its output embedding",
    "git": "shifts its logits past the image tokens",
    "musicgen": "has one head per codebook",
    "musicgen_melody": "has one head per codebook",
    "prophetnet": "predicts n-gram streams",
    "modernbert-decoder": "transforms the hidden states before its head",
    "electra": "transforms the hidden states before its head",
    **dict.fromkeys(["bert", "big_bird", "ernie", "megatron-bert", "rembert", "roc_bert", "roformer",
                     "xlm", "xlnet"], "transforms the hidden states before its head"),
}


@dataclass(frozen=True)
class OutputHead:
    """``linear`` (a bias-free nn.Linear, or its LoRA wrapper), then ``scale``, then
    ``softcap * tanh(z / softcap)`` when ``softcap`` is set."""

    linear: torch.nn.Module
    scale: float = 1.0
    softcap: float | None = None

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """The post-processing of the head's float logits (in place)."""
        if self.scale != 1.0:
            logits.mul_(self.scale)
        if self.softcap is not None:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float logits (float64 stays float64), differentiable (the trainable-head path)."""
        logits = self.linear(hidden)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def transformers_model(model):
    """The transformers model under a PeftModel (the one whose forward makes the logits)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(causal_lm) -> OutputHead:
    """The head of ``causal_lm`` (a transformers model or a PeftModel) as its forward applies it.

    Raises UsageError for a model whose logits are not softcap(scale * W h).
    """
    model = transformers_model(causal_lm)
    name, config = type(model).__name__, model.config
    model_type = getattr(config, "model_type", name)
    if model_type in REFUSED_MODEL_TYPES:
        raise UsageError(f"model type {model_type!r} ({name}) {REFUSED_MODEL_TYPES[model_type]}; "
                         "the chunked log-prob head cannot reproduce its logits")
    linear = causal_lm.get_output_embeddings()
    if linear is None or not hasattr(linear, "weight") or getattr(linear, "bias", None) is not None:
        raise UsageError(f"model type {model_type!r} ({name}): its output head {type(linear).__name__} "
                         "is not a bias-free linear layer, which the chunked log-prob head needs")
    text_config = config.get_text_config()
    scale, softcap = 1.0, None
    if name in SOFTCAP_CLASSES:
        softcap = text_config.final_logit_softcapping
    elif name == "RecurrentGemmaForCausalLM":
        softcap = config.logits_soft_cap
    elif name == "xLSTMForCausalLM":
        softcap = config.output_logit_soft_cap
    elif name in LOGIT_SCALE_CLASSES:
        scale = model.logit_scale if model.logit_scale is not None else 1.0
    elif name in DIVIDED_BY_LOGITS_SCALING:
        scale = 1.0 / config.logits_scaling
    elif name == "HyperCLOVAXForCausalLM":
        scale = config.logits_scaling
    elif name == "FalconH1ForCausalLM":
        scale = model.model.lm_head_multiplier
    return OutputHead(linear, float(scale), None if softcap is None else float(softcap))


# (class, scale, softcap, dtype) of the models checked in this process: a checkpoint series loads
# the same architecture many times, and the check is about the architecture's forward
_checked_heads: set[tuple] = set()


@torch.no_grad()
def check_output_head(causal_lm, length: int = 12) -> None:
    """Refuse (UsageError) a model whose own logits our head does not reproduce.

    One short forward at load: the model's logits against ``output_head`` applied to the final
    hidden states, both as training takes them (the model's last hidden state) and as scoring
    does (the decoder's output). Tolerance: float rounding of the model's dtype, relative to the
    row's largest logit; a missed scale or soft-cap is off by far more on a trained model.
    Once per architecture, head description and dtype in a process.
    """
    head = output_head(causal_lm)
    model = transformers_model(causal_lm)
    key = (type(model).__qualname__, type(model).__module__, head.scale, head.softcap, head.linear.weight.dtype)
    if key in _checked_heads:
        return
    was_training = model.training
    model.eval()
    try:
        device = head.linear.weight.device
        input_ids = (torch.arange(length, device=device) * 7 + 3).remainder(head.linear.weight.shape[0])[None]
        outputs = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        decoder_hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    finally:
        model.train(was_training)
    expected = outputs.logits.float()
    rtol = 1e-4 if head.linear.weight.dtype == torch.float32 else 3e-2
    for source, hidden in [("last hidden state", outputs.hidden_states[-1]), ("decoder output", decoder_hidden)]:
        ours = head.logits(hidden)
        if ours.shape != expected.shape:
            difference = float("inf")
        else:
            difference = ((ours - expected).abs().amax(-1) / (expected.abs().amax(-1) + 1e-6)).max().item()
        if not difference <= rtol:
            raise UsageError(
                f"model type {getattr(model.config, 'model_type', '?')!r} ({type(model).__name__}): the "
                f"chunked log-prob head applied to the {source} does not reproduce the model's own logits "
                f"(relative difference {difference:.3g}); its forward post-processes them in a way "
                "fwdrev.output_head does not know")
    _checked_heads.add(key)
