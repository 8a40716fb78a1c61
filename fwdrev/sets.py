"""The data sets by letter: D_f (forward questions, sample_type "original"), D_r (reverse,
"flipped") and D_m (both). The one place the letters meet the sample types; the shell
launchers ask it through ``python -m fwdrev.sets sample_types LETTER``.
"""

from __future__ import annotations

import sys

SET_SAMPLE_TYPES = {"f": ("original",), "r": ("flipped",), "m": ("original", "flipped")}
SETS = tuple(SET_SAMPLE_TYPES)
# A test set's rows of an analysis table: its one sample type, or None = all rows (D_m).
TEST_SET_SAMPLE_TYPE = {name: types[0] if len(types) == 1 else None for name, types in SET_SAMPLE_TYPES.items()}


def sample_types_flag(set_name: str) -> str:
    """The ``--sample_types`` value of a set, e.g. "original,flipped" for "m"."""
    if set_name not in SET_SAMPLE_TYPES:
        raise ValueError(f"unknown set '{set_name}' (expected {', '.join(SETS[:-1])} or {SETS[-1]})")
    return ",".join(SET_SAMPLE_TYPES[set_name])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "sample_types":
        print("usage: python -m fwdrev.sets sample_types SET   (SET: f, r or m)", file=sys.stderr)
        return 2
    try:
        print(sample_types_flag(argv[1]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
