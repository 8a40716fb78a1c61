"""How every CLI ends: bad input -> one clear message and exit code 2, not a traceback; a torchrun
process -> os._exit(0) after its main returns; and a script never runs another checkout's fwdrev."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from fwdrev.errors import USAGE_ERRORS, UsageError

_left_process_group = False  # set by fwdrev.training.finish_distributed


def note_process_group_left() -> None:
    """Record that this process used and left a torch.distributed group (``run_cli`` then ends it)."""
    global _left_process_group
    _left_process_group = True


def check_same_checkout(script: str) -> None:
    """Stop when a project script runs against the fwdrev installed from another checkout.

    Scripts import fwdrev as installed (``pip install -e .``); a script of checkout A with the
    package of checkout B would mix two versions of the code without a word.
    """
    script_path = Path(script).resolve()
    if not script_path.is_file() or len(script_path.parents) < 2:
        return  # python -c, an interactive session
    script_root, package_root = script_path.parents[1], Path(__file__).resolve().parents[1]
    if (script_root / "fwdrev").is_dir() and script_root != package_root:
        raise UsageError(f"{script} runs with the fwdrev package of {package_root}, not of its own checkout "
                         f"{script_root}: run `pip install -e .` in {script_root}")


def run_cli(main) -> None:
    """Run a script's main; bad data, inconsistent flags or a usage error end with exit code 2."""
    try:
        check_same_checkout(sys.argv[0])
        main()
    except USAGE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    if _left_process_group and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_without_teardown()


def exit_without_teardown() -> None:
    """End a torchrun process after its main returned, skipping interpreter teardown.

    Process groups that DeepSpeed still holds would otherwise be destroyed during finalization,
    and gloo's worker threads then abort the rank ("terminate called without an active
    exception", SIGABRT) after a successful run. Every output is written and closed by now.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
