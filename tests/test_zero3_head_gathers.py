"""Under ZeRO-3 + LoRA the frozen output head is gathered a fixed number of times per step,
whatever the number of response tokens or head chunks (tests/zero3_head_gathers_worker.py)."""

import json
import subprocess

import pytest
from helpers import REPO_ROOT, script_env, torchrun_command


@pytest.mark.slow
def test_head_gathers_per_step_do_not_grow_with_tokens_or_chunks(tiny_model_dir, tmp_path):
    result_path = tmp_path / "gathers.json"
    run = subprocess.run([*torchrun_command(2), str(REPO_ROOT / "tests" / "zero3_head_gathers_worker.py"),
                          str(tiny_model_dir), str(result_path)],
                         cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = json.loads(result_path.read_text())
    # cases: 8 and 60 response tokens, each in 1 chunk and in 4 or 15 chunks
    assert sorted(counts) == ["60x4", "60x64", "8x2", "8x64"]
    for case, count in counts.items():
        # forward: one GatheredParameters for all chunks of the sequence_logprobs call, plus one
        # by ZeRO-3's hook when the model's own forward runs its head on one position
        # (logits_to_keep=1); backward: none (the hidden-state gradient was computed in forward)
        assert count == {"forward_context": 1, "forward_module": 1, "backward": 0}, case
