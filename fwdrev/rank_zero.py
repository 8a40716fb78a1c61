"""Decisions made once, on rank 0, and handed to every rank (reference cache, run id)."""

from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist


def decide_on_main_process(decide: Callable[[], object], process_index: int, world_size: int,
                           broadcast: Callable[[list], None] | None = None):
    """Run ``decide`` on rank 0 only and give every rank its result.

    Each rank looking at its own file system could disagree (a node without the file, a write
    racing a read) and then half the ranks would wait in a collective the others never join.
    """
    if world_size <= 1:
        return decide()
    holder = [decide() if process_index == 0 else None]
    (broadcast or (lambda objects: dist.broadcast_object_list(objects, src=0)))(holder)
    return holder[0]
