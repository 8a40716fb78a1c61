"""The errors a run ends with when its input or flags are wrong (exit code 2 via ``fwdrev.cli.run_cli``).

Kept apart and free of imports so every layer can raise them without lifting anything above it.
"""


class UsageError(Exception):
    """A run that cannot go on as asked; the message says what to do instead."""


class DataValidationError(ValueError):
    """Bad input data; the message names the file, the column and the offending rows."""


class LengthSettingsError(ValueError):
    """--max_length / --max_prompt_length that cannot work together."""


# What ``run_cli`` turns into one message and exit code 2 instead of a traceback.
USAGE_ERRORS = (DataValidationError, LengthSettingsError, UsageError)
