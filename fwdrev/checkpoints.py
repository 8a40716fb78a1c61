"""Finding the checkpoints of a training run, and loading each one (or one model or adapter) for scoring.

Two layouts: SFT saves one folder per epoch (``CHECKPOINT_DIR/1``, ``/2``, ...), the HF Trainer
used for DPO saves ``CHECKPOINT_DIR/checkpoint-<step>``. Each folder holds a LoRA adapter
(``adapter_config.json``) or a full model (``config.json``).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fwdrev.errors import UsageError
from fwdrev.layout import EPOCH_CHECKPOINT as SFT_FOLDER
from fwdrev.layout import EPOCH_CHECKPOINTS
from fwdrev.layout import STEP_CHECKPOINT as DPO_FOLDER
from fwdrev.modeling import (
    is_adapter_dir,
    load_adapter,
    load_causal_lm,
    load_tokenizer,
    pick_attn_implementation,
)
from fwdrev.provenance import resolve_adapter_base
from fwdrev.run_identity import check_same_run, run_config_of

STAGES = ("sft", "dpo")
BASE_NAME = "base"


class CheckpointsNotFound(UsageError, FileNotFoundError):
    """No (or not the asked-for) checkpoints in a folder: exit 2 with the message, no traceback."""


@dataclass(frozen=True)
class Checkpoint:
    name: str  # folder name ("3", "checkpoint-200") or "base"
    path: Path | None  # None: the base model itself
    stage: str  # "sft" or "dpo"
    epoch: int  # SFT epoch, DPO checkpoint ordinal 1..K in step order, 0 for the base model
    step: int | None  # DPO optimizer step (0 for the base model of a DPO series)


def discover_checkpoints(checkpoint_dir: str | Path, stage: str = "auto",
                         epochs: Sequence[int] | None = None) -> list[Checkpoint]:
    """The checkpoints under ``checkpoint_dir`` in training order.

    ``stage="auto"`` picks DPO when there are ``checkpoint-<step>`` folders, else SFT.
    An SFT run folder (``scripts/sft.py``'s OUTPUT_DIR) stands for its ``checkpoints/`` folder;
    its ``checkpoint-<step>`` folders are only there to resume training.
    ``epochs`` keeps only those SFT epochs / DPO ordinals (missing ones are an error).
    Every checkpoint must carry the run_id of the run folder's run_config.json (exit 2 naming
    those of other runs: e.g. an earlier run's epochs left in the folder).
    """

    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointsNotFound(f"checkpoint folder not found: {checkpoint_dir}")
    epoch_folders = checkpoint_dir / EPOCH_CHECKPOINTS
    if stage in ("sft", "auto") and epoch_folders.is_dir() and any(
            SFT_FOLDER.match(p.name) for p in epoch_folders.iterdir() if p.is_dir()):
        checkpoint_dir, stage = epoch_folders, "sft"
    numbered = {kind: sorted(((int(m.group(1)), p) for p in checkpoint_dir.iterdir()
                              if p.is_dir() and (m := pattern.match(p.name))), key=lambda t: t[0])
                for kind, pattern in (("dpo", DPO_FOLDER), ("sft", SFT_FOLDER))}
    if stage == "auto":
        stage = "dpo" if numbered["dpo"] else "sft"
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES} or 'auto', got {stage!r}")
    if not numbered[stage]:
        expected = "checkpoint-<step>" if stage == "dpo" else "numeric epoch"
        raise CheckpointsNotFound(f"no {expected} folders in {checkpoint_dir}")
    if stage == "dpo":
        found = [Checkpoint(p.name, p, stage, ordinal, step)
                 for ordinal, (step, p) in enumerate(numbered["dpo"], start=1)]
    else:
        found = [Checkpoint(p.name, p, stage, epoch, None) for epoch, p in numbered["sft"]]
    run_folder = checkpoint_dir.parent if checkpoint_dir.name == EPOCH_CHECKPOINTS else checkpoint_dir
    check_same_run([c.path for c in found], (run_config_of(run_folder) or {}).get("run_id"), run_folder,
                   "checkpoints")
    if epochs is not None:
        missing = sorted(set(epochs) - {c.epoch for c in found})
        if missing:
            raise CheckpointsNotFound(f"{checkpoint_dir}: no checkpoint for epoch(s) {missing}; "
                                    f"found {[c.name for c in found]}")
        found = [c for c in found if c.epoch in set(epochs)]
    unloadable = [c.name for c in found
                  if not (is_adapter_dir(c.path) or (c.path / "config.json").is_file())]
    if unloadable:
        raise CheckpointsNotFound(f"{checkpoint_dir}: folders {unloadable} hold neither a LoRA "
                                "adapter (adapter_config.json) nor a model (config.json)")
    return found


def base_checkpoint(stage: str) -> Checkpoint:
    return Checkpoint(BASE_NAME, None, stage, 0, 0 if stage == "dpo" else None)


def parse_epochs(value: str | None) -> list[int] | None:
    """'1,2,5' -> [1, 2, 5]; None or '' -> None (all)."""
    if not value:
        return None
    return [int(v) for v in value.split(",") if v.strip()]


def series_base_model(checkpoints: Sequence[Checkpoint], base_model: str | None = None,
                      force: bool = False) -> str | None:
    """The base model of a checkpoint series: ``base_model`` checked against, or by default the
    one recorded by, its LoRA adapters (``fwdrev.provenance.resolve_adapter_base``; raises
    ``UsageError`` on a mismatch unless ``force``). None: full models and no ``base_model``."""
    adapters = [c.path for c in checkpoints if c.path is not None and is_adapter_dir(c.path)]
    if not adapters:
        return base_model
    resolved = resolve_adapter_base(adapters[0], base_model, force)
    for path in adapters[1:]:  # every adapter of the series must sit on that same base
        resolve_adapter_base(path, resolved, force)
    return resolved


class CheckpointModels:
    """Loads each checkpoint of a series for scoring.

    LoRA checkpoints share one copy of the base model: the next adapter is loaded and made
    active, the previous one deleted. Full-model checkpoints are loaded one at a time.
    An adapter whose recorded base is not ``base_model`` is refused unless ``force_base_model``.
    """

    def __init__(self, base_model: str, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", attn_implementation: str = "sdpa",
                 force_base_model: bool = False):
        self.base_model, self.dtype, self.device = base_model, dtype, device
        self.attn_implementation = attn_implementation
        self.force_base_model = force_base_model
        self._model = None  # the base model, a PeftModel once an adapter was loaded
        self._adapter: str | None = None

    def _load(self, path) -> torch.nn.Module:
        model = load_causal_lm(str(path), self.dtype, self.attn_implementation, device=self.device)
        return model.to(self.device).eval()

    def _shared_base(self):
        if self._model is None:
            self._model = self._load(self.base_model)
        return self._model

    @contextmanager
    def activate(self, checkpoint: Checkpoint) -> Iterator[torch.nn.Module]:
        """The model of ``checkpoint``, in eval mode on the device."""
        if checkpoint.path is None:
            model = self._shared_base()
            if self._adapter is None:
                yield model
            else:
                with model.disable_adapter():
                    yield model
        elif is_adapter_dir(checkpoint.path):
            yield self._swap_adapter(checkpoint)
        else:
            model = self._load(checkpoint.path)
            try:
                yield model
            finally:
                del model
                free_memory()

    def _swap_adapter(self, checkpoint: Checkpoint):
        resolve_adapter_base(checkpoint.path, self.base_model, self.force_base_model)
        name = re.sub(r"\W", "_", checkpoint.name)  # adapter names become module keys
        model = load_adapter(self._shared_base(), checkpoint.path, adapter_name=name)
        model.set_adapter(name)
        if self._adapter is not None and self._adapter != name:
            model.delete_adapter(self._adapter)
        self._model, self._adapter = model.eval(), name
        return model


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_for_scoring(model_path: str, base_model: str | None = None,
                     dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     use_flash_attention: bool = False, trust_remote_code: bool = False,
                     force_base_model: bool = False, base_flag: str = "--base_model"):
    """Load a full model or a LoRA adapter directory.

    An adapter is loaded on the base recorded in its adapter_config.json; a ``base_model`` that
    is another model raises ``fwdrev.cli.UsageError`` unless ``force_base_model`` (see
    ``fwdrev.provenance.resolve_adapter_base``). Full models ignore ``base_model``.
    Returns (model in eval mode on ``device``, tokenizer).
    """
    attn = pick_attn_implementation(use_flash_attention)
    if is_adapter_dir(model_path):
        base_path = resolve_adapter_base(model_path, base_model, force_base_model, base_flag)
        model = load_causal_lm(base_path, dtype, attn, trust_remote_code)
        model = load_adapter(model, model_path)
        tokenizer_path = model_path if (Path(model_path) / "tokenizer_config.json").is_file() else base_path
    else:
        model = load_causal_lm(model_path, dtype, attn, trust_remote_code)
        tokenizer_path = model_path
    tokenizer = load_tokenizer(tokenizer_path, trust_remote_code)
    return model.to(device).eval(), tokenizer
