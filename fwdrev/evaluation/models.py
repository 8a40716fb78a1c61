"""Which models a run evaluates, and a backend for each.

``--model_path`` entries are models or LoRA adapters (an adapter is loaded on its recorded
base; another ``--base_model`` is refused unless ``--force_base_model``). ``--checkpoint_dir``
is a training run's checkpoint series, discovered as the log-probability analysis does
(``fwdrev.checkpoints``: SFT epochs or DPO steps), optionally with its base model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fwdrev.checkpoints import (
    CheckpointModels,
    base_checkpoint,
    discover_checkpoints,
    load_for_scoring,
    parse_epochs,
    series_base_model,
)
from fwdrev.errors import UsageError
from fwdrev.evaluation.runner import ModelSpec
from fwdrev.modeling import is_adapter_dir, load_tokenizer


def parse_model_paths(values: list[str]) -> list[ModelSpec]:
    """``LABEL=PATH`` or ``PATH`` (label: the folder name) -> specs, labels unique."""
    specs = []
    for value in values:
        label, sep, path = value.partition("=")
        if not sep:
            label, path = Path(value.rstrip("/")).name or value, value
        if not Path(path).exists():
            raise UsageError(f"--model_path {value}: {path} not found")
        specs.append(ModelSpec(label, path))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--model_path labels repeat ({labels}): name them, e.g. sft_f=PATH")
    return specs


def series_specs(checkpoint_dir: str, stage: str = "auto", epochs: str | None = None,
                 include_base: bool = False, base_model: str | None = None,
                 force_base_model: bool = False) -> list[ModelSpec]:
    try:
        checkpoints = discover_checkpoints(checkpoint_dir, stage, parse_epochs(epochs))
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    base = series_base_model(checkpoints, base_model, force_base_model)
    if include_base:
        if base is None:
            raise UsageError("--include_base: the checkpoints are full models; name the base with --base_model")
        checkpoints = [base_checkpoint(checkpoints[0].stage), *checkpoints]
    run = Path(checkpoint_dir.rstrip("/")).name
    return [ModelSpec(f"{run}/{c.name}", None if c.path is None else str(c.path), c.name, c.stage, c.epoch, c.step,
                      {"checkpoint": c, "base": base}) for c in checkpoints]


def tokenizer_source(spec: ModelSpec, base_model: str | None, force_base_model: bool = False) -> str:
    """The folder to load the spec's tokenizer from: its own, else its (checked) base model's."""
    if spec.path is None:
        return spec.extra["base"]
    if (Path(spec.path) / "tokenizer_config.json").is_file() or not is_adapter_dir(spec.path):
        return spec.path
    if spec.extra.get("base"):
        return spec.extra["base"]
    from fwdrev.provenance import resolve_adapter_base

    return resolve_adapter_base(spec.path, base_model, force_base_model)  # a wrong base: exit 2


class HFModels:
    """Loads each spec's model for the ``hf`` backend; a series shares one base (CheckpointModels)."""

    def __init__(self, base_model: str | None, force_base_model: bool, device: torch.device):
        from fwdrev.scoring import scoring_dtype

        self.base_model, self.force, self.device = base_model, force_base_model, device
        self.dtype = scoring_dtype(device)
        self._series: dict[str, CheckpointModels] = {}

    @contextmanager
    def load(self, spec: ModelSpec) -> Iterator[tuple[torch.nn.Module, object]]:
        tokenizer = load_tokenizer(tokenizer_source(spec, self.base_model, self.force))
        if "checkpoint" not in spec.extra:
            model, _ = load_for_scoring(spec.path, self.base_model, self.dtype, self.device,
                                        force_base_model=self.force)
            try:
                yield model, tokenizer
            finally:
                del model
            return
        base = spec.extra["base"] or spec.path
        series = self._series.setdefault(base, CheckpointModels(base, self.dtype, self.device,
                                                                force_base_model=self.force))
        with series.activate(spec.extra["checkpoint"]) as model:
            yield model, tokenizer


class VLLMModels:
    """One vLLM engine per model; LoRA adapters share their base's engine."""

    def __init__(self, base_model: str | None, force_base_model: bool, engine_args: dict):
        self.base_model, self.force, self.engine_args = base_model, force_base_model, engine_args
        self._engines: dict[str, object] = {}

    @contextmanager
    def load(self, spec: ModelSpec):
        from fwdrev.evaluation.vllm_backend import VLLMBackend
        from fwdrev.provenance import resolve_adapter_base

        tokenizer_path = tokenizer_source(spec, self.base_model, self.force)
        adapter = spec.path if spec.path is not None and is_adapter_dir(spec.path) else None
        series_base = spec.extra.get("base")
        if adapter is not None:
            model_path = series_base or resolve_adapter_base(adapter, self.base_model, self.force)
        else:
            model_path = spec.path or series_base
        shared = adapter is not None or (series_base is not None and spec.path is None)
        backend = VLLMBackend(model_path, tokenizer_path, adapter, engine=self._engines.get(model_path),
                              enable_lora=shared, **self.engine_args)
        if shared:
            self._engines[model_path] = backend.llm  # the series' adapters reuse their base's engine
        try:
            yield backend, load_tokenizer(tokenizer_path)
        finally:
            if not shared:
                del backend
