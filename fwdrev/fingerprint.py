"""Fingerprints of the inputs a cached number depends on: data files, model and adapter folders.

A cache keyed by a path is wrong the day someone regenerates the data or re-trains into the same
folder. These fingerprints change whenever the content does:

* a data or small file: the SHA-256 of its bytes;
* a model or adapter folder: for each file that defines the weights or the tokenizer, its name,
  size and a hash of its content: whole for files up to ``FULL_HASH_BYTES`` and for large files
  other than safetensors; a larger safetensors file hashes its header (every tensor's name,
  dtype, shape and offsets) plus, for EVERY tensor, ``TENSOR_WINDOWS`` evenly spaced windows of
  its own bytes (first and last included). Re-training or merging an adapter rewrites a tensor
  throughout, so each changed tensor changes the digest, without reading 15 GB of a 7B model;
* a hub name (no such local path): the content of its cached snapshot (found offline), else
  ``name@revision`` (``unknown`` without a revision).
"""

from __future__ import annotations

import hashlib
import json
import struct
from functools import lru_cache
from pathlib import Path

FULL_HASH_BYTES = 64 * 2**20
BLOCK_BYTES = 2**20  # read size of whole-file hashing
# Per tensor of a large safetensors file: 8 windows of 4 KiB (1-2k values each); a tensor up to
# 32 KiB is read whole. A 7B model's ~340 tensors: about 11 MB read.
TENSOR_WINDOWS = 8
WINDOW_BYTES = 4096
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


def _safetensors_digest(path: Path) -> str:
    """The header, and sampled bytes of every tensor from inside its own byte range."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
        header_bytes = f.read(header_length)
        digest.update(header_bytes)
        data_start = 8 + header_length
        tensors = [info for name, info in json.loads(header_bytes).items() if name != "__metadata__"]
        for begin, end in sorted(tuple(info["data_offsets"]) for info in tensors):
            size = end - begin
            if size <= TENSOR_WINDOWS * WINDOW_BYTES:
                starts = [begin] if size else []
                length = size
            else:
                starts = [begin + (size - WINDOW_BYTES) * i // (TENSOR_WINDOWS - 1) for i in range(TENSOR_WINDOWS)]
                length = WINDOW_BYTES
            for start in starts:
                f.seek(data_start + start)
                digest.update(f.read(length))
    return digest.hexdigest()


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime too, so a file rewritten in this process is hashed again
    file = Path(path)
    if size > FULL_HASH_BYTES and file.suffix == ".safetensors":
        return _safetensors_digest(file)
    return file_sha256(file)  # .bin/.pt pickles: no tensor table to sample from


def file_fingerprint(path: str | Path) -> str:
    path = Path(path)
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def model_files(folder: str | Path) -> list[Path]:
    """The files of a model or adapter folder that its outputs depend on (not sub-folders)."""
    folder = Path(folder)
    found = {p for pattern in MODEL_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted(p for p in found if p.name not in SKIPPED_FILES)


def model_fingerprint(folder: str | Path, revision: str | None = None) -> str:
    """One hex digest for a model, adapter or tokenizer folder, or a hub name (see the module)."""
    folder = Path(folder)
    if not folder.is_dir():
        snapshot = cached_hub_snapshot(str(folder), revision)
        if snapshot is None:
            return hashlib.sha256(f"name:{folder}@{revision or 'unknown'}".encode()).hexdigest()
        folder = snapshot
    files = model_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no model, adapter or tokenizer files to fingerprint")
    entries = [[p.name, p.stat().st_size, file_fingerprint(p)] for p in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def cached_hub_snapshot(name: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of hub model ``name`` at ``revision`` (default: main), found
    offline in the Hugging Face cache; None if it is not there or ``name`` is no hub name."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), not a repo id (HFValidationError)
        return None


def key_digest(key: dict) -> str:
    """A short stable digest of a JSON-serialisable key (for file names and log lines)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
