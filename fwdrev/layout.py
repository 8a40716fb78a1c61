"""The folder layout of a training run, named once.

OUTPUT_DIR of scripts/sft.py or dpo/combined_dpo.py::

    run_config.json          the run's record: arguments, run_id, training data, start model
    data_report.json         rows used / excluded / truncated
    metrics.csv, runs/       the Trainer's log history; TensorBoard
    dynamics.csv             log-prob probes (--probe_every)
    reference_logps.*        DPO reference log-probs, keyed by content (fwdrev.reference)
    <final model>            adapter_config.json + adapter weights, or config.json + weights; tokenizer
    checkpoint-<step>/       the Trainer's checkpoints (resume; the DPO analysis series)
    checkpoints/<epoch>/     SFT: the model after each epoch (the SFT analysis series)
    merged/                  --merge_weights: base + adapter

Every model folder a run writes (each checkpoint, merged/) holds ``RUN_RECORD``, a copy of the
run's record: a folder copied or moved elsewhere still says which run made it (fwdrev.run_identity).
"""

from __future__ import annotations

import re
from pathlib import Path

RUN_CONFIG = "run_config.json"
RUN_RECORD = "run_record.json"  # the run's record inside each model folder it writes
DATA_REPORT = "data_report.json"
METRICS = "metrics.csv"
DYNAMICS = "dynamics.csv"
TENSORBOARD = "runs"
REFERENCE_CACHE = "reference_logps.parquet"
REFERENCE_CACHE_KEY = "reference_logps.json"
EPOCH_CHECKPOINTS = "checkpoints"
MERGED = "merged"
STEP_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
EPOCH_CHECKPOINT = re.compile(r"^(\d+)$")

# What a run leaves in OUTPUT_DIR besides its checkpoint folders: removed by --overwrite_output_dir.
# The reference cache is not: it is keyed by content and checked before any reuse.
RUN_FILES = (RUN_CONFIG, DATA_REPORT, METRICS, DYNAMICS, TENSORBOARD, EPOCH_CHECKPOINTS, MERGED,
             "trainer_state.json", "training_args.bin", "README.md")
# The final model and tokenizer saved into OUTPUT_DIR (sharded weights included).
FINAL_MODEL_PATTERNS = ("adapter_config.json", "adapter_model.*", "config.json", "generation_config.json",
                        "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                        "pytorch_model*.bin", "tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                        "chat_template.jinja")


def step_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoint-<step> folders of ``folder``, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STEP_CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_CHECKPOINT.match(p.name).group(1)))


def epoch_checkpoint_dir(output_dir: str | Path, epoch: int) -> Path:
    return Path(output_dir) / EPOCH_CHECKPOINTS / str(epoch)


def run_outputs(output_dir: str | Path) -> list[Path]:
    """Everything a previous run wrote into ``output_dir`` (what --overwrite_output_dir removes)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = step_checkpoints(folder) + [folder / name for name in RUN_FILES if (folder / name).exists()]
    found += sorted({p for pattern in FINAL_MODEL_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    hidden = [p for p in folder.glob(".*") if p.name.endswith((".partial", ".old"))]  # killed saves
    return found + sorted(hidden)
