"""Splitting the examples of a scoring run over processes, and merging their tables.

Two ways to shard:

* ``torchrun --nproc_per_node=N``: each rank scores its shard and writes it to a file; the
  ranks meet at a barrier (a gloo process group, used for nothing else) and rank 0 merges;
* separate runs with ``--num_shards N --shard_id i`` (other machines, a job array): each run
  writes its shard file and the run that finds all N files present merges them.

Merged tables are ordered by example_id, so they equal a single-process run's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch

from fwdrev.io import atomic_path

T = TypeVar("T")
KEY_METADATA = b"fwdrev_key"  # Parquet metadata entry: what a part's rows were computed from
BARRIER_TIMEOUT = timedelta(hours=12)  # a rank may wait for a slower one to score a checkpoint


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1
    launched: bool = False  # under torchrun: barriers, rank 0 merges
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def take(self, items: Sequence[T], size: Callable[[T], int] | None = None) -> list[T]:
        """This shard's items: round-robin over the items sorted by ``size``, so loads balance."""
        order = sorted(range(len(items)), key=lambda i: -size(items[i])) if size else range(len(items))
        return [items[i] for i in list(order)[self.index :: self.count]]

    def barrier(self) -> None:
        if self.launched and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def close(self) -> None:
        if self.launched and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def device(self, gpu_id: int = 0) -> torch.device:
        """cuda:LOCAL_RANK under torchrun, cuda:gpu_id otherwise, or the CPU.

        Also makes it the current CUDA device, so that nothing a rank allocates without naming
        a device (CUDA context, flash-attn workspaces) lands on GPU 0.
        """
        if not torch.cuda.is_available():
            return torch.device("cpu")
        index = self.local_rank if self.launched else gpu_id
        torch.cuda.set_device(index)
        return torch.device("cuda", index)

    def file(self, final_path: str | Path, index: int | None = None) -> Path:
        """Where shard ``index`` (default: this one) of ``final_path`` is written."""
        final_path = Path(final_path)
        index = self.index if index is None else index
        return final_path.with_name(f"{final_path.name}.shard-{index}-of-{self.count}")


def current_shard(num_shards: int | None = None, shard_id: int | None = None) -> Shard:
    """The shard of this process: from torchrun's environment, else the explicit flags."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        if num_shards not in (None, world_size) or shard_id not in (None, int(os.environ["RANK"])):
            raise ValueError("--num_shards/--shard_id cannot be combined with a torchrun launch "
                             f"of {world_size} processes")
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        return Shard(int(os.environ["RANK"]), world_size, True, int(os.environ.get("LOCAL_RANK", 0)))
    if num_shards is None and shard_id is None:
        return Shard()
    if num_shards is None or shard_id is None or not 0 <= shard_id < num_shards:
        raise ValueError(f"need --num_shards N and 0 <= --shard_id < N, got {num_shards} and {shard_id}")
    return Shard(shard_id, num_shards)


def gather_table(shard: Shard, table: pd.DataFrame, final_path: str | Path,
                 expected_ids: Sequence[int], key: dict | None = None) -> pd.DataFrame | None:
    """Write this shard's rows; merge all shards into ``final_path`` (Parquet) once all exist.

    Every process of a torchrun launch must call this (it holds a barrier). Returns the merged
    table on the process that wrote it, None elsewhere. The merge is checked to hold every
    expected example exactly once (stale shard files of another run fail loudly). With ``key``
    (what the rows were computed from, see ``read_key``) every file carries it, and shard files
    of another key are never merged: they are named, and count as not written yet (the run of
    this key that scores their shard overwrites them).
    """
    final_path = Path(final_path)
    if shard.count == 1:
        table = by_example_id(table)
        write_parquet(table, final_path, key)
        return table
    write_parquet(table, shard.file(final_path), key)
    shard.barrier()
    if shard.launched and not shard.is_main:
        return None
    files = [shard.file(final_path, i) for i in range(shard.count)]
    foreign = [f for f in files if key is not None and f.exists() and read_key(f) != key]
    for f in foreign:
        print(f"ignored shard file {f}: scored from another model, data or settings")
    if foreign:
        return None
    try:
        merged = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except FileNotFoundError:  # another shard has not finished (or is merging right now)
        return None
    merged = by_example_id(merged)
    if sorted(merged["example_id"]) != sorted(expected_ids):
        raise RuntimeError(f"shard files {files[0].name}... do not hold exactly the expected "
                           "examples; delete them and rerun")
    write_parquet(merged, final_path, key)
    for f in files:
        f.unlink(missing_ok=True)
    return merged


def by_example_id(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("example_id", kind="stable").reset_index(drop=True)


def write_parquet(frame: pd.DataFrame, path: str | Path, key: dict | None = None) -> None:
    """Atomic Parquet write whatever the file name (shard and part files are not *.parquet,
    so figure code looking for analysis tables does not pick them up). ``key`` is stored in
    the file's metadata, in the same write as the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    if key is not None:
        metadata = dict(arrow.schema.metadata or {})
        metadata[KEY_METADATA] = json.dumps(key, sort_keys=True).encode()
        arrow = arrow.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def read_key(path: str | Path) -> dict | None:
    """The ``key`` a file was written with (None: none, or an unreadable file)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):  # missing or truncated
        return None
    return json.loads(metadata[KEY_METADATA]) if KEY_METADATA in metadata else None
