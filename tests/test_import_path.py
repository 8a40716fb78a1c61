"""One import path: scripts import fwdrev as installed (`pip install -e .`), from any folder."""

import subprocess
import sys

import pytest
from helpers import REPO_ROOT, script_env

from fwdrev.cli import check_same_checkout
from fwdrev.errors import UsageError

SCRIPT_FOLDERS = ("analysis", "dpo", "scripts", "visualization")
TEST_ENVIRONMENT = (REPO_ROOT / "tests" / "helpers.py", REPO_ROOT / "tests" / "conftest.py")


@pytest.mark.parametrize("script", ["analysis/analyze_dpo_model.py", "dpo/combined_dpo.py", "scripts/sft.py"])
def test_script_runs_from_another_folder(script, tmp_path):
    # The environment goes through as it is: CI sets no PYTHONPATH, so there this proves the install
    # alone finds fwdrev; a developer's PYTHONPATH (a second worktree) points it at their checkout.
    result = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"], cwd=tmp_path,
                            env=script_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--output_dir" in result.stdout or "--model_path" in result.stdout


def test_no_script_or_test_environment_edits_the_import_path():
    scripts = [path for folder in SCRIPT_FOLDERS for path in sorted((REPO_ROOT / folder).glob("*.[ps][yh]"))]
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}" for path in scripts + list(TEST_ENVIRONMENT)
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "sys.path.insert" in line or "PYTHONPATH" in line]
    assert offenders == []


def test_script_of_another_checkout_stops(tmp_path):
    (tmp_path / "fwdrev").mkdir()
    script = tmp_path / "dpo" / "combined_dpo.py"
    script.parent.mkdir()
    script.write_text("")
    with pytest.raises(UsageError, match="not of its own checkout"):
        check_same_checkout(str(script))
    check_same_checkout(str(REPO_ROOT / "dpo" / "combined_dpo.py"))  # its own checkout: no error
    check_same_checkout("-c")  # python -c: nothing to compare
