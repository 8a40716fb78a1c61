"""How every CLI starts and ends: known third-party deprecation warnings silenced; bad input -> one
clear message and exit code 2, not a traceback; a torchrun process -> os._exit(0) after its main
returns; and a script never runs another checkout's fwdrev."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from fwdrev.errors import USAGE_ERRORS, UsageError

# Deprecation warnings of third-party calls that fwdrev does not make: (message regex, category,
# module regex of where the warning is attributed). DeepSpeed's ZeRO-3 calls these collectives on
# every gather and reduce; torch attributes the warning to its own c10d_logger wrapper, and a
# 2-process tiny SFT epoch printed 629 of them (1,258 lines; the quickstart 11,378).
THIRD_PARTY_WARNINGS = [
    (r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated", FutureWarning,
     r"torch\.distributed\."),
]

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


def quiet_third_party_warnings() -> None:
    """Ignore the warnings in ``THIRD_PARTY_WARNINGS`` (by message, category and calling module
    only: every other warning, ours included, still shows)."""
    for message, category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def run_cli(main) -> None:
    """Run a script's main; bad data, inconsistent flags or a usage error end with exit code 2."""
    quiet_third_party_warnings()  # also in every torchrun rank: each runs its script through here
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
