"""How every CLI ends on bad input: one clear message and exit code 2, not a traceback."""

from __future__ import annotations

import sys

from fwdrev.data import DataValidationError
from fwdrev.tokenization import LengthSettingsError



class UsageError(Exception):
    """A run that cannot go on as asked; the message says what to do instead."""


USAGE_ERRORS = (DataValidationError, LengthSettingsError, UsageError)


def run_cli(main) -> None:
    """Run a script's main; bad data, inconsistent flags or a usage error end with exit code 2."""
    try:
        main()
    except USAGE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
