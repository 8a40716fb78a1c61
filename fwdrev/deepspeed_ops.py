"""Check, before any model is loaded, that the DeepSpeed C++ op a config needs can be loaded.

A config that offloads the optimizer to CPU (``configs/ds_config_zero3_10k.json``) runs
DeepSpeed's ``cpu_adam`` op. Unless DeepSpeed was installed with it pre-built
(``DS_BUILD_CPU_ADAM=1 pip install deepspeed``), it is compiled at the first optimizer step, after
the model has loaded, and a machine without a C++ compiler or ninja fails there with a deep
traceback. Configs without offload leave the optimizer to the Trainer (PyTorch AdamW): no op.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fwdrev.errors import UsageError

PREBUILD_HINT = ("pre-build it once where a C++ compiler is available: DS_BUILD_CPU_ADAM=1 pip install "
                 "--no-cache-dir --force-reinstall deepspeed==<your version>, or use "
                 "configs/ds_config_zero3.json (no offload, PyTorch AdamW)")


def deepspeed_config(value) -> dict:
    """The DeepSpeed config given to --deepspeed: a dict already, or a JSON file."""
    if isinstance(value, dict):
        return value
    try:
        return json.loads(Path(value).read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"--deepspeed {value}: cannot read the config ({error})") from error


def offloads_optimizer(config: dict) -> bool:
    offload = config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def cpu_adam_problem() -> str | None:
    """Why DeepSpeed's cpu_adam op could not be loaded here, or None if it can."""
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops.op_builder import CPUAdamBuilder
    from torch.utils.cpp_extension import is_ninja_available

    builder = CPUAdamBuilder()
    if installed_ops.get(builder.name, False):
        return None  # pre-built at install time
    if not builder.is_compatible():
        return f"DeepSpeed reports its cpu_adam op incompatible with this machine: {builder.error_log}"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"it is not pre-built and no C++ compiler ({compiler}) is on PATH to build it"
    if not is_ninja_available():
        return "it is not pre-built and ninja (pip install ninja) is missing to build it"
    return None


def check_deepspeed_ops(training_args) -> None:
    """Stop with one clear message if the optimizer a DeepSpeed config needs cannot be loaded."""
    if not getattr(training_args, "deepspeed", None):
        return
    if not offloads_optimizer(deepspeed_config(training_args.deepspeed)):
        return
    problem = cpu_adam_problem()
    if problem:
        raise UsageError(f"--deepspeed {training_args.deepspeed} offloads the optimizer to CPU, which "
                         f"needs DeepSpeed's cpu_adam op, but {problem}; {PREBUILD_HINT}")
