"""Shared pytest fixtures (keep each one small and documented)."""

import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO_ROOT
from hypothesis import settings

# Property tests draw the same examples on every run, so CI is reproducible; run with
# HYPOTHESIS_PROFILE=explore to draw fresh random examples (and ten times as many).
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The real example lives outside the repo (../shared/data) and is never copied into it.
SHARED_SAMPLE_PATH = REPO_ROOT.parent / "shared" / "data" / "data-100samples.parquet"


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
    from fwdrev.devtools.tiny_model import build_and_save

    frame = pd.read_parquet(REPO_ROOT / "r1k.parquet", columns=["text", "worse-text"])
    output_dir = tmp_path_factory.mktemp("tiny-qwen")
    build_and_save(str(output_dir), list(frame["text"]) + list(frame["worse-text"]), seed=0)
    return output_dir


@pytest.fixture
def one_thread():
    """Compute in-process on one thread: on a busy 2-core machine spinning OpenMP threads cost 10x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
