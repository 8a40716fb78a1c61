"""Fingerprints of the inputs a cached number depends on: data files, model and adapter folders.

A cache keyed by a path is wrong the day someone regenerates the data or re-trains into the same
folder. These fingerprints change whenever the content does:

* a data or small file: the SHA-256 of its bytes;
* a model or adapter folder: for each file that defines the weights or the tokenizer, its name,
  size and a hash of its content: whole for files up to ``FULL_HASH_BYTES``; for larger ones the
  safetensors header (names, dtypes, shapes) plus ``SAMPLED_BLOCKS`` evenly spaced 1 MiB blocks,
  which any re-training changes, without reading 15 GB of a 7B checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import struct
from functools import lru_cache
from pathlib import Path

FULL_HASH_BYTES = 64 * 2**20
SAMPLED_BLOCKS = 16
BLOCK_BYTES = 2**20
# What a model/adapter folder's values depend on (optimizer state, logs and metrics are not).
MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "config.json", "adapter_config.json",
                       "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                       "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                       "chat_template.jinja", "*.model", "*.tiktoken")
SKIPPED_FILES = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _large_file_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            (header_length,) = struct.unpack("<Q", f.read(8))
            digest.update(f.read(min(header_length, size - 8)))
        for index in range(SAMPLED_BLOCKS):
            f.seek((size - BLOCK_BYTES) * index // max(SAMPLED_BLOCKS - 1, 1))
            digest.update(f.read(BLOCK_BYTES))
    return digest.hexdigest()


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime too, so a file rewritten in this process is hashed again
    file = Path(path)
    return file_sha256(file) if size <= FULL_HASH_BYTES else _large_file_digest(file, size)


def file_fingerprint(path: str | Path) -> str:
    path = Path(path)
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def model_files(folder: str | Path) -> list[Path]:
    """The files of a model or adapter folder that its outputs depend on (not sub-folders)."""
    folder = Path(folder)
    found = {p for pattern in MODEL_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted(p for p in found if p.name not in SKIPPED_FILES)


def model_fingerprint(folder: str | Path) -> str:
    """One hex digest for a model, adapter or tokenizer folder; a hub name hashes as itself."""
    folder = Path(folder)
    if not folder.is_dir():
        return hashlib.sha256(f"name:{folder}".encode()).hexdigest()
    files = model_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no model, adapter or tokenizer files to fingerprint")
    entries = [[p.name, p.stat().st_size, file_fingerprint(p)] for p in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def key_digest(key: dict) -> str:
    """A short stable digest of a JSON-serialisable key (for file names and log lines)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
