"""Fingerprints change with content, not with paths; large files are sampled, not read whole."""

import json
import struct

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


def test_empty_folder_is_an_error_and_hub_names_hash_as_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model"):
        model_fingerprint(tmp_path)
    assert model_fingerprint("Qwen/Qwen2.5-7B") == model_fingerprint("Qwen/Qwen2.5-7B")
    assert key_digest({"a": 1, "b": 2}) == key_digest({"b": 2, "a": 1})
    assert key_digest({"a": 1}) != key_digest({"a": 2})
