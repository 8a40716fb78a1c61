"""Plain helpers shared by the tests: paths, the scripts' environment, launching and loading scripts.

Fixtures live in conftest.py; everything here is an ordinary function a test imports
(``from helpers import ...``; pytest puts tests/ on sys.path).
"""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO_ROOT / "visualization" / "paper_figure_values.csv"  # the published values


def script_env(**extra) -> dict:
    """Environment for running the project's scripts in a subprocess (CPU, shared op cache)."""
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only oversubscribe the cores
    env.update({key: str(value) for key, value in extra.items()})
    return env


def free_port() -> int:
    """A free TCP port for a process group.

    Not torchrun's --master_port=0: it does not work with static rendezvous, and DeepSpeed names
    its CPU shared-memory buffers after MASTER_PORT, so concurrent runs that all see 0 share them
    and hang.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(procs: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
            f"--master_port={free_port()}"]


def training_command(script, model_dir, data_path, output_dir, *args, procs: int = 1) -> list[str]:
    """A training script on one model and data file: plain python for one process, torchrun for more."""
    launcher = torchrun_command(procs) if procs > 1 else [sys.executable]
    return launcher + [str(script), "--model_name", str(model_dir), "--train_file_path", str(data_path),
                       "--output_dir", str(output_dir), *args]


def run_command(command, env=None, cwd=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """Run in its own process group, killed as a whole on timeout (no orphaned ranks).

    ``check``: fail the test, with the ends of stdout and stderr, unless the command exits 0.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=script_env() if env is None else env, cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"timed out after {timeout} s: {command}\n{stdout[-2000:]}\n{stderr[-3000:]}")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def load_script(folder: str, name: str):
    """Import <folder>/<name>.py of the repo as a module, to call its functions in-process."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_mentions(text: str, *facts) -> None:
    """Every key fact (a row list, a column, a path, a flag, a number) appears in a message.

    Tests check the facts a user acts on, not the wording of the sentence around them.
    """
    missing = [str(fact) for fact in facts if str(fact) not in text]
    assert not missing, f"{missing} not in:\n{text[-3000:]}"
