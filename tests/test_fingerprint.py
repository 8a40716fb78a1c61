"""Fingerprints change with content, not with paths; large files are sampled, not read whole."""

import json
import os
import struct

import numpy as np
import pytest

from fwdrev import fingerprint
from fwdrev.fingerprint import file_sha256, key_digest, model_fingerprint


def _write_safetensors(path, payload: bytes):
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(payload) // 4],
                               "data_offsets": [0, len(payload)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "data.parquet"
    path.write_bytes(b"x" * 3_000_001)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_001).hexdigest()


def test_model_fingerprint_follows_weights_and_tokenizer_not_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        _write_safetensors(folder / "model.safetensors", b"\0" * 400)
        (folder / "config.json").write_text("{}")
        (folder / "optimizer.pt").write_bytes(b"state")
    assert model_fingerprint(a) == model_fingerprint(b)  # same content, other path
    (b / "optimizer.pt").write_bytes(b"other state")  # not part of the model's values
    assert model_fingerprint(a) == model_fingerprint(b)
    _write_safetensors(b / "model.safetensors", b"\0" * 396 + b"\1\0\0\0")  # one weight changed
    assert model_fingerprint(a) != model_fingerprint(b)
    _write_safetensors(b / "model.safetensors", b"\0" * 400)
    (b / "tokenizer.json").write_text("{}")
    assert model_fingerprint(a) != model_fingerprint(b)


def test_large_file_is_sampled_and_still_sees_retraining(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 1024)
    monkeypatch.setattr(fingerprint, "BLOCK_BYTES", 64)
    folder = tmp_path / "m"
    folder.mkdir()
    payload = bytearray(64 * 40)
    _write_safetensors(folder / "model.safetensors", bytes(payload))
    before = model_fingerprint(folder)
    payload[-1] = 7  # the last block is always sampled
    _write_safetensors(folder / "model.safetensors", bytes(payload))
    assert model_fingerprint(folder) != before


def _write_many_tensors(path, count: int, values_each: int) -> list[tuple[int, int]]:
    """A safetensors file of ``count`` random float32 tensors; their byte ranges in the file."""
    rng = np.random.default_rng(0)
    header, offset = {}, 0
    for i in range(count):
        header[f"layers.{i}.weight"] = {"dtype": "F32", "shape": [values_each],
                                        "data_offsets": [offset, offset + 4 * values_each]}
        offset += 4 * values_each
    header_bytes = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes
                     + rng.standard_normal(count * values_each, dtype=np.float32).tobytes())
    start = 8 + len(header_bytes)
    return [(start + info["data_offsets"][0], start + info["data_offsets"][1]) for info in header.values()]


def test_every_tensor_of_a_large_safetensors_file_counts(tmp_path, monkeypatch):
    """Re-training one tensor (any one) changes the fingerprint; a sampled file once missed
    most tensors of a 109 MiB model (16 blocks of 1 MiB)."""
    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 2**20)  # 20 MiB file: sampled, not hashed whole
    folder = tmp_path / "m"
    folder.mkdir()
    ranges = _write_many_tensors(folder / "model.safetensors", count=80, values_each=2**16)
    before = model_fingerprint(folder)
    rng = np.random.default_rng(1)
    unseen = []
    with open(folder / "model.safetensors", "r+b") as f:
        for index, (begin, end) in enumerate(ranges):
            f.seek(begin)
            original = f.read(end - begin)
            values = np.frombuffer(original, dtype=np.float32)
            f.seek(begin)  # fine-tuned: every value moves a little
            f.write((values + rng.normal(0, 1e-3, values.size).astype(np.float32)).tobytes())
            f.flush()
            fingerprint._file_digest.cache_clear()  # same size, maybe the same mtime tick
            if model_fingerprint(folder) == before:
                unseen.append(index)
            f.seek(begin)
            f.write(original)
            f.flush()
    fingerprint._file_digest.cache_clear()
    assert model_fingerprint(folder) == before  # restored
    assert unseen == []


def test_empty_folder_is_an_error_and_hub_names_hash_as_names(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="no model"):
        model_fingerprint(tmp_path)
    assert model_fingerprint("Qwen/Qwen2.5-7B") == model_fingerprint("Qwen/Qwen2.5-7B")
    # not cached: the name and its revision (another revision is other weights)
    assert model_fingerprint("Qwen/Qwen2.5-7B", revision="a1") != model_fingerprint("Qwen/Qwen2.5-7B",
                                                                                      revision="b2")
    assert model_fingerprint("Qwen/Qwen2.5-7B", revision="a1") != model_fingerprint("Qwen/Qwen2.5-7B")
    assert key_digest({"a": 1, "b": 2}) == key_digest({"b": 2, "a": 1})
    assert key_digest({"a": 1}) != key_digest({"a": 2})


def test_a_cached_hub_model_is_fingerprinted_by_content(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshots = {}
    for commit, value in (("a" * 40, b"\0"), ("b" * 40, b"\1")):
        snapshots[commit] = repo / "snapshots" / commit
        snapshots[commit].mkdir(parents=True)
        _write_safetensors(snapshots[commit] / "model.safetensors", value * 400)
        (snapshots[commit] / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert model_fingerprint("org/tiny") == model_fingerprint(snapshots["a" * 40])
    assert model_fingerprint("org/tiny", revision="b" * 40) == model_fingerprint(snapshots["b" * 40])
    (repo / "refs" / "main").write_text("b" * 40)  # the hub's main moved on: other weights
    assert model_fingerprint("org/tiny") == model_fingerprint(snapshots["b" * 40])
    os.remove(snapshots["b" * 40] / "model.safetensors")
    assert model_fingerprint("org/tiny") != model_fingerprint(snapshots["a" * 40])
