"""Shared pytest fixtures (keep each one small and documented)."""

from pathlib import Path

import os

import pandas as pd
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so CI is reproducible; run with
# HYPOTHESIS_PROFILE=explore to draw fresh random examples (and ten times as many).
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real example lives outside the repo (../shared/data) and is never copied into it.
SHARED_SAMPLE_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "data-100samples.parquet"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_sample_path() -> Path:
    """Path of the real 100-row example; skips the test when this checkout has no ../shared/data."""
    if not SHARED_SAMPLE_PATH.is_file():
        pytest.skip(f"real sample data not found at {SHARED_SAMPLE_PATH} (expected at ../shared/data)")
    return SHARED_SAMPLE_PATH


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 model + tokenizer built once per session (tokenizer trained on the shipped r1k.parquet)."""
    from fwdrev.tiny_model import build_and_save

    frame = pd.read_parquet(REPO_ROOT / "r1k.parquet", columns=["text", "worse-text"])
    output_dir = tmp_path_factory.mktemp("tiny-qwen")
    build_and_save(str(output_dir), list(frame["text"]) + list(frame["worse-text"]), seed=0)
    return output_dir


def script_env(**extra) -> dict:
    """Environment for running the project's scripts in a subprocess (CPU, shared op cache)."""
    import os

    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only oversubscribe the cores
    env.update({key: str(value) for key, value in extra.items()})
    return env


def free_port() -> int:
    """A free TCP port for torchrun (its --master_port=0 does not work with static rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(procs: int) -> list[str]:
    import sys

    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
            f"--master_port={free_port()}"]


def load_script(folder: str, name: str):
    """Import <folder>/<name>.py of the repo as a module, to call its functions in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
