"""Training recipes: every hyper-parameter of a run in one YAML file per stage and preset.

``recipes/<stage>/<preset>.yaml`` (e.g. ``recipes/dpo/original.yaml``) holds flat ``flag: value``
pairs, the same names as the command-line flags. ``--config NAME_OR_PATH`` loads one; flags given
on the command line override it (as in alignment-handbook). A bare name is looked up under
``recipes/<stage>/``. The resolved values of every run are saved in its ``run_config.json``.

A recipe also names how its run uses the GPUs: the DeepSpeed config (``deepspeed``), ``bf16``,
``use_flash_attention`` and ``gradient_checkpointing``; the launchers pass the recipe and paths
only. On a machine without CUDA, ``cpu_recipe`` turns those of them that came from the recipe
(never a flag given on the command line) into what a CPU runs.

Also here: the settings every recipe shares beyond ``TrainingArguments``: a global batch size
from which the accumulation steps follow, and the original run's learning-rate schedule.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainingArguments

from fwdrev.errors import UsageError

LR_SCHEDULES = ("trainer", "deepspeed_warmup_decay")
# Without CUDA: fp32, SDPA, no recomputation, and ZeRO-3 without its CUDA-only parts (PyTorch
# AdamW, no offload) when several processes share the model; one process runs without DeepSpeed.
CPU_DEEPSPEED_CONFIG = "configs/ds_config_zero3_cpu.json"
CPU_OFF = ("bf16", "fp16", "use_flash_attention", "gradient_checkpointing")  # back to their defaults (off)


def recipe_path(name_or_path: str, stage: str, recipes_dir: str | Path | None) -> Path:
    """``original`` -> <recipes_dir>/<stage>/original.yaml; a path is taken as it is.

    ``recipes_dir``: the checkout's ``recipes/`` folder, which the scripts pass in (the package
    does not guess where its checkout is).
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    if recipes_dir is None:
        raise UsageError(f"--config {name_or_path}: a recipe name needs the recipes folder; pass a YAML path")
    return Path(recipes_dir) / stage / f"{name_or_path}.yaml"


def load_recipe(path: str | Path, known_flags: set[str]) -> dict:
    """The recipe's values; unknown keys are an error naming the file and the keys."""
    path = Path(path)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise UsageError(f"--config: recipe {path} not found" + (f"; available: {available}" if available else ""))
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise UsageError(f"{path}: a recipe is a mapping of flag: value, got {type(values).__name__}")
    unknown = sorted(set(values) - known_flags)
    if unknown:
        raise UsageError(f"{path}: unknown setting(s) {unknown} (not a flag of this script)")
    return values


def resolve_recipe_paths(recipe: dict, checkout: Path | None) -> dict:
    """A recipe's relative ``deepspeed`` path (``configs/ds_config_zero3.json``) that is not there
    from the working directory is taken from the checkout, so a run can start anywhere."""
    path = recipe.get("deepspeed")
    if checkout is None or not isinstance(path, str) or not path or Path(path).is_absolute() or Path(path).exists():
        return recipe
    return {**recipe, "deepspeed": str(checkout / path)} if (checkout / path).is_file() else recipe


def cpu_recipe(recipe: dict, argv: list[str], world_size: int,
               checkout: Path | None) -> tuple[dict, str | None]:
    """The recipe as a machine without CUDA runs it, and one line saying what changed (None: nothing).

    The recipe's GPU settings (``CPU_OFF``, ``deepspeed``) become their CPU equivalents; a
    setting given on the command line is kept as given.
    """
    settled, changed = dict(recipe), []
    off = [name for name in CPU_OFF if settled.get(name) and not flag_given(argv, f"--{name}")]
    for name in off:
        del settled[name]  # the default: off (gradient_checkpointing=False would warn as deprecated)
    if off:
        changed.append(", ".join(off) + " off")
    if settled.get("deepspeed") and not flag_given(argv, "--deepspeed"):
        cpu_config = str(checkout / CPU_DEEPSPEED_CONFIG) if checkout is not None else CPU_DEEPSPEED_CONFIG
        if world_size <= 1:
            settled["deepspeed"] = None
            changed.append("no DeepSpeed (one process)")
        elif Path(settled["deepspeed"]).name != Path(CPU_DEEPSPEED_CONFIG).name:
            settled["deepspeed"] = cpu_config
            changed.append(f"deepspeed {cpu_config}")
    if not changed:
        return settled, None
    return settled, ("no CUDA, so the recipe's GPU settings become: " + "; ".join(changed)
                     + " (a flag on the command line overrides)")


def pop_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--config X`` / ``--config=X`` out of ``argv``."""
    rest, config = [], None
    items = iter(argv)
    for item in items:
        if item == "--config":
            config = next(items, None)
            if config is None:
                raise UsageError("--config needs a recipe name or a YAML path")
        elif item.startswith("--config="):
            config = item.split("=", 1)[1]
        else:
            rest.append(item)
    return config, rest


@dataclass
class RecipeTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the two settings the study's recipes need."""

    config: str | None = field(
        default=None, metadata={"help": "Recipe: a name under recipes/<stage>/ (e.g. original, lora) or a "
                                        "YAML path; flags on the command line override its values."})
    global_batch_size: int | None = field(
        default=None, metadata={"help": "Examples per optimizer step over all processes; sets "
                                        "--gradient_accumulation_steps = global / (processes x "
                                        "per-device batch), which must divide evenly."})
    lr_schedule: str = field(
        default="trainer", metadata={"help": f"One of {LR_SCHEDULES}: 'trainer' uses --lr_scheduler_type; "
                                             "'deepspeed_warmup_decay' is the original run's DeepSpeed "
                                             "WarmupDecayLR (log warm-up over --warmup_steps, then linear "
                                             "decay to 0 at the last step), with or without DeepSpeed."})
    remove_unused_columns: bool = field(  # a code requirement, not a recipe setting
        default=False, metadata={"help": "Keep False: the batches hold what the loss reads, not the model's "
                                         "forward arguments."})

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"--lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.global_batch_size is not None:
            self.gradient_accumulation_steps = accumulation_steps(
                self.global_batch_size, int(os.environ.get("WORLD_SIZE", "1")),
                self.per_device_train_batch_size)
        super().__post_init__()


def accumulation_steps(global_batch_size: int, world_size: int, per_device_batch_size: int) -> int:
    per_step = world_size * per_device_batch_size
    if global_batch_size <= 0 or global_batch_size % per_step:
        raise UsageError(f"--global_batch_size {global_batch_size} is not a multiple of processes x "
                         f"per-device batch = {world_size} x {per_device_batch_size} = {per_step}")
    return global_batch_size // per_step


def settle_batch_flags(recipe: dict, recipe_file, argv: list[str]) -> dict:
    """The recipe's values without the batch setting the command line replaces; both the global
    batch and the accumulation given in one place is an error (one would be dropped unseen)."""
    both = ("global_batch_size", "gradient_accumulation_steps")
    if set(both) <= recipe.keys():
        raise UsageError(f"{recipe_file}: sets both global_batch_size and gradient_accumulation_steps "
                         "(the global batch decides the accumulation); keep one")
    if all(flag_given(argv, f"--{name}") for name in both):
        raise UsageError("--global_batch_size and --gradient_accumulation_steps both given: the global "
                         "batch decides the accumulation (global / (processes x per-device batch)); "
                         "give one of them")
    settled = dict(recipe)
    if flag_given(argv, "--gradient_accumulation_steps"):
        settled.pop("global_batch_size", None)  # the command line's accumulation wins
    if flag_given(argv, "--global_batch_size"):
        settled.pop("gradient_accumulation_steps", None)  # and its global batch
    return settled


def flag_given(argv: list[str], flag: str) -> bool:
    spellings = (flag, flag.replace("_", "-"))
    return any(item in spellings or item.split("=", 1)[0] in spellings for item in argv)


def warmup_decay_factor(updates_done: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor of DeepSpeed's WarmupDecayLR (log warm-up) after ``updates_done``.

    DeepSpeed starts at its minimum (0) and steps once per update, so the k-th update
    (1-based) runs at the factor of iteration k - 2: 0 for the first two updates, then
    log(i + 1) / log(W) up to iteration W - 1, then (T - i) / (T - W), floored at 0.
    """
    iteration = updates_done - 1
    if iteration < 0:
        return 0.0
    warmup = max(2, warmup_steps)
    if iteration < warmup:
        return math.log(iteration + 1) / math.log(warmup)
    return max(0.0, (total_steps - iteration) / max(1.0, total_steps - warmup))


class RecipeScheduleMixin:
    """Trainer mixin: ``--lr_schedule deepspeed_warmup_decay`` as a plain PyTorch scheduler."""

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.args.lr_schedule != "deepspeed_warmup_decay" or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        self.lr_scheduler = LambdaLR(
            optimizer if optimizer is not None else self.optimizer,
            lambda updates: warmup_decay_factor(updates, warmup, num_training_steps))
        self._created_lr_scheduler = True
        return self.lr_scheduler
