"""The code paths a GPU cluster takes, exercised on CPU: ZeRO-3 + LoRA + gradient checkpointing,
plain DDP full fine-tuning, and the launcher's device count and rendezvous (through fake
``nvidia-smi``/``torchrun`` executables that record their arguments)."""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from helpers import REPO_ROOT, script_env
from test_dpo import run_dpo, train_losses

ZERO3_CPU = str(REPO_ROOT / "configs" / "ds_config_zero3_cpu.json")
TWO_STEPS = ["--max_steps", "2", "--save_steps", "100", "--eval_strategy", "no", "--seed", "3"]


@pytest.mark.slow
def test_zero3_lora_with_gradient_checkpointing_matches_without(tiny_model_dir, tmp_path):
    """DeepSpeed <= 0.19.2 fails at the first backward here (non-reentrant checkpointing of
    ZeRO-3 partitioned layers); with a tested DeepSpeed the losses equal the run without."""
    run = [*TWO_STEPS, "--deepspeed", ZERO3_CPU]
    run_dpo(tiny_model_dir, tmp_path / "plain", *run, procs=2)
    run_dpo(tiny_model_dir, tmp_path / "checkpointed", *run, "--gradient_checkpointing", procs=2)
    plain, checkpointed = train_losses(tmp_path / "plain"), train_losses(tmp_path / "checkpointed")
    assert list(checkpointed.index) == [1, 2]
    assert plain.loc[1, "loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert plain.loc[2, "rewards/margins"] != pytest.approx(0.0, abs=1e-6)  # step 1 moved the policy
    for column in ["loss", "rewards/margins", "logps/chosen"]:
        assert checkpointed[column].to_numpy() == pytest.approx(plain[column].to_numpy(), abs=1e-5)


@pytest.mark.slow
def test_ddp_full_finetuning_without_deepspeed(tiny_model_dir, tmp_path):
    """Plain DDP, trainable head: the head's chunks must not be reentrant checkpoints (each one
    would mark the head's weight ready again: "Expected to mark a variable ready only once")."""
    run_dpo(tiny_model_dir, tmp_path / "ddp", *TWO_STEPS, "--no_use_lora", "--logprob_chunk_size", "48",
            "--deepspeed", "", procs=2)  # without the recipe's (CPU) ZeRO-3 config
    losses = train_losses(tmp_path / "ddp")
    assert list(losses.index) == [1, 2]
    assert losses.loc[1, "loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert losses.loc[2, "rewards/margins"] != pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


# ---- the launchers, through fake nvidia-smi and torchrun ---------------------------------------

def fake_cluster(tmp_path, gpus: int) -> tuple[Path, Path]:
    """A bin folder with an ``nvidia-smi -L`` listing ``gpus`` GPUs and a ``torchrun`` that
    appends its arguments (one JSON list per call) to the returned record file."""
    import sys

    bin_dir, record = tmp_path / "bin", tmp_path / "torchrun_calls.jsonl"
    bin_dir.mkdir(parents=True)
    listing = "".join(f"GPU {i}: NVIDIA H200 (UUID: GPU-{i:08d})\\n" for i in range(gpus))
    scripts = {
        "nvidia-smi": f"#!/bin/sh\nprintf '{listing}'\n",
        "torchrun": f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir, record


def run_launcher(tmp_path, script: str, gpus: int = 8, **env) -> tuple[subprocess.CompletedProcess, list]:
    bin_dir, record = fake_cluster(tmp_path, gpus)
    model, data = tmp_path / "model", tmp_path / "data.parquet"
    model.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"")
    defaults = dict(MODEL_PATH=model, MODEL_PATHS=f"{model} {model}", MODEL_NAMES="a b", DATA_PATH=data,
                    OUTPUT_ROOT=tmp_path / "out", BASE_MODEL=model, CHECKPOINT_DIR=model, DATASET_PATH=data)
    full_env = script_env(**{**defaults, **env})
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env['PATH']}"
    for name in ["CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT", "NUM_NODES", "NUM_PROCS"]:
        if name not in env:
            full_env.pop(name, None)
    result = subprocess.run(["bash", str(REPO_ROOT / script)], capture_output=True, text=True,
                            env=full_env, timeout=120)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []
    return result, calls


def flag(call: list, name: str) -> str | None:
    values = [argument.split("=", 1)[1] for argument in call if argument.startswith(f"--{name}=")]
    return values[0] if values else None


@pytest.mark.parametrize("visible, procs", [(None, 8), ("2,5", 2), ("GPU-00000003", 1), ("0,-1,3", 1)])
def test_gpu_count_follows_cuda_visible_devices(tmp_path, visible, procs):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    result, calls = run_launcher(tmp_path, "dpo/7b-train_multiple_base_models.sh", **env)
    assert result.returncode == 0, result.stderr
    assert [flag(call, "nproc_per_node") for call in calls] == [str(procs)] * 2


def test_single_node_keeps_the_users_port_and_refreshes_its_own(tmp_path):
    result, calls = run_launcher(tmp_path / "set", "dpo/7b-train_multiple_base_models.sh",
                                 MASTER_PORT="29555")
    assert result.returncode == 0, result.stderr
    assert [flag(call, "master_port") for call in calls] == ["29555", "29555"]
    result, calls = run_launcher(tmp_path / "unset", "scripts/sft.sh", TRAIN_SETS="f r m")
    assert result.returncode == 0, result.stderr
    ports = [int(flag(call, "master_port")) for call in calls]
    assert len(ports) == 3 and all(port > 0 for port in ports)


def test_multi_node_uses_one_c10d_endpoint_and_a_rendezvous_id_per_run(tmp_path):
    result, calls = run_launcher(tmp_path, "scripts/sft.sh", TRAIN_SETS="f r m", NUM_NODES="2",
                                 MASTER_ADDR="10.0.0.1", MASTER_PORT="29555")
    assert result.returncode == 0, result.stderr
    assert len(calls) == 3
    assert {flag(call, "rdzv_backend") for call in calls} == {"c10d"}
    assert {flag(call, "rdzv_endpoint") for call in calls} == {"10.0.0.1:29555"}
    assert [flag(call, "rdzv_id") for call in calls] == ["sft_sft_f", "sft_sft_r", "sft_sft_m"]
    assert all(flag(call, "nnodes") == "2" and flag(call, "master_port") is None for call in calls)


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT"])
def test_multi_node_without_the_head_address_stops_before_launching(tmp_path, missing):
    env = {"NUM_NODES": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29555"}
    del env[missing]
    result, calls = run_launcher(tmp_path, "scripts/sft.sh", **env)
    assert result.returncode == 2 and calls == []
    assert "MASTER_ADDR" in result.stderr and "MASTER_PORT" in result.stderr


@pytest.mark.parametrize("script", ["dpo/7b-train_multiple_base_models.sh", "scripts/sft.sh"])
@pytest.mark.parametrize("gpus", [8, 0])
def test_launchers_leave_deepspeed_and_precision_to_the_recipe(tmp_path, script, gpus):
    """The recipe names its DeepSpeed config and precision; DS_CONFIG / PRECISION_ARGS from the
    environment become flags that override it, DS_CONFIG set but empty: no DeepSpeed."""
    device_flags = {"--deepspeed", "--bf16", "--use_flash_attention", "--gradient_checkpointing"}
    for recipe in ("lora", "original" if script.startswith("dpo") else "s1"):
        result, calls = run_launcher(tmp_path / recipe, script, gpus=gpus, RECIPE=recipe)
        assert result.returncode == 0, result.stderr
        assert calls and all(call[call.index("--config") + 1] == recipe and not device_flags & set(call)
                             for call in calls)
    result, calls = run_launcher(tmp_path / "set", script, gpus=gpus, DS_CONFIG="configs/ds_config_zero3_10k.json",
                                 PRECISION_ARGS="--bf16 False --gradient_checkpointing False")
    assert result.returncode == 0, result.stderr
    for call in calls:
        assert call[call.index("--deepspeed") + 1] == "configs/ds_config_zero3_10k.json"
        assert call[call.index("--bf16"):call.index("--bf16") + 4] == ["--bf16", "False", "--gradient_checkpointing",
                                                                        "False"]
    result, calls = run_launcher(tmp_path / "empty", script, gpus=gpus, DS_CONFIG="")
    assert result.returncode == 0, result.stderr
    assert calls and all(call[call.index("--deepspeed") + 1] == "" for call in calls)


# ---- DeepSpeed optimizer ops -------------------------------------------------------------------

def test_non_offload_config_leaves_the_optimizer_to_the_trainer():
    """No "optimizer" block: the Trainer makes PyTorch AdamW, no FusedAdam build with nvcc."""
    config = json.loads((REPO_ROOT / "configs" / "ds_config_zero3.json").read_text())
    assert "optimizer" not in config and "offload_optimizer" not in config["zero_optimization"]
    offload = json.loads((REPO_ROOT / "configs" / "ds_config_zero3_10k.json").read_text())
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_offload_config_checks_cpu_adam_first(monkeypatch):
    from types import SimpleNamespace

    from fwdrev import deepspeed_ops
    from fwdrev.errors import UsageError

    monkeypatch.setattr(deepspeed_ops, "cpu_adam_problem", lambda: "no C++ compiler (c++) is on PATH")
    deepspeed_ops.check_deepspeed_ops(SimpleNamespace(deepspeed=str(REPO_ROOT / "configs" / "ds_config_zero3.json")))
    deepspeed_ops.check_deepspeed_ops(SimpleNamespace(deepspeed=None))
    with pytest.raises(UsageError, match="cpu_adam.*no C\\+\\+ compiler.*DS_BUILD_CPU_ADAM=1"):
        deepspeed_ops.check_deepspeed_ops(
            SimpleNamespace(deepspeed=str(REPO_ROOT / "configs" / "ds_config_zero3_10k.json")))


def test_offload_run_without_cpu_adam_exits_2_before_loading_the_model(tmp_path):
    """DeepSpeed's own check says the op cannot be built: one message, exit 2, no traceback
    (the model folder does not even exist: nothing was loaded)."""
    import sys

    program = (
        "import sys; import deepspeed.ops.op_builder as b; import deepspeed.git_version_info as v\n"
        "b.CPUAdamBuilder.is_compatible = lambda self, verbose=False: False\n"
        "v.installed_ops['cpu_adam'] = False\n"
        "sys.argv = ['combined_dpo.py'] + sys.argv[1:]\n"
        f"import runpy; runpy.run_path({str(REPO_ROOT / 'dpo' / 'combined_dpo.py')!r}, run_name='__main__')\n")
    result = subprocess.run(
        [sys.executable, "-c", program, "--model_name", str(tmp_path / "no_model"), "--train_file_path",
         str(REPO_ROOT / "data-100samples.parquet"), "--output_dir", str(tmp_path / "out"),
         "--deepspeed", str(REPO_ROOT / "configs" / "ds_config_zero3_10k.json")],
        capture_output=True, text=True, env=script_env(), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "cpu_adam" in result.stderr and "DS_BUILD_CPU_ADAM=1" in result.stderr


# ---- analysis on GPUs --------------------------------------------------------------------------

def test_each_analysis_rank_makes_its_gpu_current(monkeypatch):
    import torch

    from fwdrev.sharding import Shard

    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert Shard(1, 2, launched=True, local_rank=1).device(gpu_id=0) == torch.device("cuda", 1)
    assert Shard().device(gpu_id=3) == torch.device("cuda", 3)
    assert made_current == [1, 3]


@pytest.mark.parametrize("script", ["analysis/run_dpo_analysis.sh", "analysis/run_training_dynamics.sh"])
def test_analysis_launchers_ask_for_flash_attention_on_gpus_only(tmp_path, script):
    result, calls = run_launcher(tmp_path / "gpu", script)
    assert result.returncode == 0, result.stderr
    assert len(calls) == 1 and "--use_flash_attention" in calls[0] and flag(calls[0], "nproc_per_node") == "8"
    result, calls = run_launcher(tmp_path / "cpu", script, gpus=0)
    assert result.returncode == 0, result.stderr
    assert len(calls) == 1 and "--use_flash_attention" not in calls[0]


# ---- tested versions ---------------------------------------------------------------------------

def test_requirement_floors_are_the_pinned_tested_versions():
    """Every requirement has a pin in constraints.txt that it accepts and that this (tested)
    environment has installed; setup_env.sh installs with the constraints."""
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    def entries(name):
        lines = (REPO_ROOT / name).read_text().splitlines()
        return [Requirement(line.split("#")[0]) for line in lines
                if line.split("#")[0].strip() and not line.startswith("-e")]

    pins = {canonicalize_name(r.name): Version(str(r.specifier).removeprefix("==")) for r in entries("constraints.txt")}
    for requirement in entries("requirements.txt"):
        pin = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pin), (requirement, pin)
        if any(s.operator == "==" for s in requirement.specifier):
            continue  # a pinned test-only dependency: the same pin in both files
        floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert floors and Version(f"{pin.major}.{pin.minor}") <= floors[0] <= pin, (requirement, pin)  # tested
    for name, pin in pins.items():
        assert Version(version(name)).public == str(pin), name  # pins are what CI runs
    assert "deepspeed" in pins and pins["deepspeed"] >= Version("0.19.3")
    assert "-c constraints.txt" in (REPO_ROOT / "scripts" / "setup_env.sh").read_text()


# ---- scripts/gpu_check.sh ----------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_check_tiny_runs_train_analysis_and_prints_the_table(tmp_path):
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--tiny"], capture_output=True,
                            text=True, env=script_env(GPU_CHECK_DIR=tmp_path), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| tokens/seq | ranks | parameters (trainable) | loss step 1, 2 | tokens/s | MFU | peak memory (MiB) |" \
        in result.stdout
    assert "MFU = tokens/s x 6 x (trainable + frozen parameters)" in result.stdout
    (run,) = json.loads((tmp_path / "tiny" / "gpu_check.json").read_text())["runs"]
    assert run["seq_len"] == 192 and run["world_size"] == 1 and run["mfu"] is None  # no GPU: no MFU
    assert run["losses"]["1"] == pytest.approx(math.log(2), abs=1e-4) and run["tokens_per_s"] > 0
    assert run["peak_mib"]["cpu (RSS, all processes)"] > 100
    assert "| 192 | 1 | " in result.stdout
    import pandas as pd

    scores = pd.read_parquet(tmp_path / "tiny" / "len192" / "analysis" / "scores.parquet")
    assert len(scores) == 2 and scores["checkpoint"].eq("checkpoint-2").all()
    failed = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--tiny"], capture_output=True,
                            text=True, env=script_env(GPU_CHECK_DIR=tmp_path, PRECISION_ARGS="--no_such_flag"),
                            timeout=600)
    assert failed.returncode != 0 and "| tokens/seq |" not in failed.stdout
    assert "FAILED" in failed.stderr and "dpo.log" in failed.stderr
    assert "no_such_flag" in (tmp_path / "tiny" / "len192" / "dpo.log").read_text()


def test_gpu_check_tokens_per_second_and_mfu_arithmetic(tmp_path, monkeypatch):
    from fwdrev.devtools import gpu_check

    check = tmp_path / "len8192"
    (check / "dpo" / "checkpoint-2").mkdir(parents=True)
    (check / "analysis").mkdir()
    (check / "analysis" / "scores.parquet").write_bytes(b"x")
    history = [{"step": 1, "loss": math.log(2)}, {"step": 2, "loss": 0.69}]
    (check / "dpo" / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (check / "meta.json").write_text(json.dumps({"seq_len": 8192, "world_size": 8, "gpus": 8, "model_dir": "m"}))
    (check / "memory.json").write_text(json.dumps({"source": "nvidia-smi memory.used", "peak_mib": {"gpu0": 70000.0}}))
    monkeypatch.setattr(gpu_check, "step_wall_times", lambda run_dir: {1: 100.0, 2: 104.0})
    monkeypatch.setattr(gpu_check, "parameter_counts", lambda model_dir, adapter: (7_000_000_000, 600_000_000))
    row = gpu_check.measure(check, peak_tflops=989.0)
    assert row["tokens_per_s"] == pytest.approx(2 * 8192 * 8 / 4.0)  # 32,768 tokens/s
    assert row["mfu"] == pytest.approx(32768 * 6 * 7.6e9 / (8 * 989e12))
    assert row["peak_mib"] == {"gpu0": 70000.0}
    history[0]["loss"] = 0.5  # step 1 must be log 2 (fresh adapter = reference)
    (check / "dpo" / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    with pytest.raises(RuntimeError, match="not log 2"):
        gpu_check.measure(check, peak_tflops=989.0)
