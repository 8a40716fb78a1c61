"""The harness the benchmark scripts share (``scripts/benchmark_{logprobs,scoring,dpo}.py``): a
measured subprocess, peak memory, a worker that hands back JSON, the machine line, the table.

Every measured run is a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

BYTES_PER_GB = 1024 ** 3


def maxrss_bytes(ru_maxrss: int) -> int:
    """``ru_maxrss`` in bytes: Linux reports kB, macOS bytes."""
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measured_run(command: list[str], log_path: Path, cwd=None) -> dict:
    """Run ``command``; its wall seconds, CPU seconds and its own peak RSS (that child's ru_maxrss,
    from ``os.wait4``: imports, loading and writing outputs count), and the 1-minute load seen."""
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed (exit {process.returncode}):\n"
                           f"{Path(log_path).read_text()[-4000:]}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": maxrss_bytes(usage.ru_maxrss), "load": max(load_before, os.getloadavg()[0])}


def run_json_worker(command: list[str], result_file, env=None, cwd=None) -> dict:
    """Run a worker process that writes its figures to ``result_file`` (JSON); a failed worker
    gives ``{"error": "exit N: <last line>", "log_tail": ...}`` instead."""
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    if completed.returncode != 0:
        error = completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "no output"
        return {"error": f"exit {completed.returncode}: {error}", "log_tail": completed.stderr[-4000:]}
    return json.loads(Path(result_file).read_text())


def machine_facts(threads: int | None) -> str:
    """One line naming what the figures were measured on."""
    import psutil
    import torch
    import transformers

    return (f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} torch threads, "
            f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / BYTES_PER_GB:.0f} GB RAM, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")


def markdown_table(columns: list[str], align: str, rows: list[list]) -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` (text) or ``r`` (numbers)."""
    rule = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
