"""D_f, D_r, D_m: one mapping from set letters to sample types, asked by Python and the launchers."""

import subprocess

import pytest
from helpers import REPO_ROOT, script_env

from fwdrev import result_tables
from fwdrev.sets import SETS, TEST_SET_SAMPLE_TYPE, sample_types_flag


def test_sample_types_of_each_set():
    assert [sample_types_flag(name) for name in SETS] == ["original", "flipped", "original,flipped"]
    assert TEST_SET_SAMPLE_TYPE == {"f": "original", "r": "flipped", "m": None}
    with pytest.raises(ValueError, match="unknown set 'x' \\(expected f, r or m\\)"):
        sample_types_flag("x")


def test_figures_use_the_same_sets():
    assert result_tables.SETS is SETS and result_tables.TEST_SET_SAMPLE_TYPE is TEST_SET_SAMPLE_TYPE


def test_launchers_ask_python_for_the_sample_types():
    script = ('source scripts/launch_common.sh; for s in f r m; do set_sample_types "$s"; done; '
              'set_sample_types x || echo "refused: $?"')
    result = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=script_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.splitlines() == ["original", "flipped", "original,flipped", "refused: 2"]
    assert "error: unknown set 'x' (expected f, r or m)" in result.stderr
