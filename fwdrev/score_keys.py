"""What a score table was computed from: the key stored in every analysis part and shard file.

A part or shard file is merged only with files of the same key, so rows scored from another
model, data file, precision, scoring rule or flag never end up in one table.
"""

from __future__ import annotations

from fwdrev.data_arguments import LENGTH_FLAGS, ROW_FLAGS
from fwdrev.fingerprint import model_fingerprint
from fwdrev.tokenization import SCORING_RULES_VERSION

# Flags that change the scores of a row (the data file's content and the models are keyed apart):
# the row selection and the lengths (fwdrev.data_arguments), then the scorer's own flags.
SCORING_FLAGS = ("max_tokens", "score_tokens", "scoring")
CONTENT_FLAGS = ROW_FLAGS + LENGTH_FLAGS + SCORING_FLAGS + ("allow_train_overlap",)


def content_settings(args, dtype) -> dict:
    """``CONTENT_FLAGS`` with their values, the scoring dtype and ``SCORING_RULES_VERSION``."""
    settings = {flag: getattr(args, flag) for flag in CONTENT_FLAGS}
    return {**settings, "dtype": str(dtype), "scoring_rules": SCORING_RULES_VERSION}


def model_content(model_path: str, base_model: str | None = None) -> dict:
    """Fingerprints of a model folder and, for a LoRA adapter, of the base it is loaded on."""
    return {"fingerprint": model_fingerprint(model_path),
            "base_fingerprint": model_fingerprint(base_model) if base_model else None}
