"""analysis/evaluate_benchmarks.py on the tiny model: outputs, resume after a kill, --regrade, exit 2."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from helpers import REPO_ROOT, load_script, script_env

from fwdrev.cli import run_cli
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.evaluation import forcing
from fwdrev.evaluation.records import read_records

evaluate_benchmarks = load_script("analysis", "evaluate_benchmarks")
SCRIPT = REPO_ROOT / "analysis" / "evaluate_benchmarks.py"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "benchmarks"


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    path = tmp_path_factory.mktemp("heldout") / "test.parquet"
    generate_preference_rows(4, seed=2).to_parquet(path)
    return path


def flags(model, heldout, output_dir, *extra):
    return ["--model_path", f"tiny={model}", "--benchmarks", "heldout,math500,gpqa_diamond",
            "--data_files", f"heldout={heldout}", f"math500={FIXTURES / 'math500.jsonl'}",
            f"gpqa_diamond={FIXTURES / 'gpqa_diamond.jsonl'}", "--max_tokens", "6", "--chunk_size", "4",
            "--output_dir", str(output_dir), *extra]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, heldout, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("benchmarks")
    evaluate_benchmarks.main(flags(tiny_model_dir, heldout, output_dir))
    return output_dir


def test_outputs_per_example_and_per_benchmark(finished, heldout):
    records, _ = read_records(finished / "predictions.jsonl")
    rows = len(pd.read_parquet(heldout))
    assert [r["benchmark"] for r in records].count("heldout") == rows
    assert {r["benchmark"] for r in records} == {"heldout", "math500", "gpqa_diamond"}
    assert len(records) == rows + 4 + 4
    first = records[0]
    assert set(first) >= {"benchmark", "id", "prompt", "generation", "thinking_tokens", "answer_tokens",
                          "stop_reason", "extracted", "gold", "correct"}
    assert all(r["thinking_tokens"] + r["answer_tokens"] <= 6 for r in records)
    assert {r["stop_reason"] for r in records} <= {"end", "max_tokens"}
    math = [r for r in records if r["benchmark"] == "math500"]
    assert [r["gold"] for r in math] == ["7", "\\frac{3}{4}", "5", "(0,1]"]
    assert "<|im_start|>user\nSolve the following math problem" in math[0]["prompt"]
    accuracy = pd.read_csv(finished / "accuracy.csv").set_index("benchmark")
    for benchmark, group in pd.DataFrame(records).groupby("benchmark"):
        assert accuracy.loc[benchmark, "n"] == len(group)
        assert accuracy.loc[benchmark, "accuracy"] == pytest.approx(group["correct"].mean())
    heldout_rows = pd.DataFrame([r for r in records if r["benchmark"] == "heldout"])
    for sample_type, group in heldout_rows.groupby("sample_type"):  # T_f and T_r apart too
        assert accuracy.loc[f"heldout_{sample_type}", "n"] == len(group) == rows // 2
    cut_off = (heldout_rows["stop_reason"] == "max_tokens") & heldout_rows["extracted"].isna()
    assert accuracy.loc["heldout", "n_no_answer_at_budget"] == cut_off.sum() > 0
    table = pd.read_csv(finished / "accuracy_table.csv")
    assert table.columns.tolist() == ["model", "heldout", "math500", "gpqa_diamond", "heldout_original",
                                      "heldout_flipped"]
    assert table["model"].tolist() == ["tiny"]
    config = json.loads((finished / "run_config.json").read_text())
    assert config["benchmarks"]["math500"]["rows"] == 4 and len(config["benchmarks"]["math500"]["sha256"]) == 64
    assert config["generation"]["max_tokens"] == 6


def test_a_killed_run_resumes_without_generating_again(tiny_model_dir, heldout, finished, tmp_path, monkeypatch):
    real, calls = forcing.generate_all, []

    def killed_after_one_chunk(backend, tokenizer, prompts, config):
        if calls:
            raise KeyboardInterrupt  # the run is killed while generating its second chunk
        calls.append(len(prompts))
        return real(backend, tokenizer, prompts, config)

    runner = sys.modules["fwdrev.evaluation.runner"]
    monkeypatch.setattr(runner, "generate_all", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        evaluate_benchmarks.main(flags(tiny_model_dir, heldout, tmp_path))
    assert len(read_records(tmp_path / "predictions.jsonl")[0]) == 4
    with open(tmp_path / "predictions.jsonl", "a") as file:
        file.write('{"model": "tiny", "benchmark": "mat')  # and mid-write
    generated = []
    monkeypatch.setattr(runner, "generate_all", lambda b, t, prompts, c: generated.append(len(prompts))
                        or real(b, t, prompts, c))
    evaluate_benchmarks.main(flags(tiny_model_dir, heldout, tmp_path))
    total = len(read_records(finished / "predictions.jsonl")[0])
    assert sum(generated) == total - 4  # only what the killed run had not done
    resumed, expected = (pd.DataFrame(read_records(p / "predictions.jsonl")[0]).sort_values(["benchmark", "id"])
                         .reset_index(drop=True) for p in (tmp_path, finished))
    pd.testing.assert_frame_equal(resumed, expected)
    generated.clear()
    evaluate_benchmarks.main(flags(tiny_model_dir, heldout, tmp_path))  # all done: nothing generated
    assert generated == []


def test_resuming_with_other_settings_is_refused(tiny_model_dir, heldout, finished, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *flags(tiny_model_dir, heldout, finished, "--num_wait", "1")])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_benchmarks.main)
    assert exit_info.value.code == 2 and "num_wait" in capsys.readouterr().err


def test_regrade_saved_generations(finished, tmp_path):
    records, _ = read_records(finished / "predictions.jsonl")
    math = next(i for i, r in enumerate(records) if r["benchmark"] == "math500" and r["gold"] == "\\frac{3}{4}")
    records[math].update(generation="<|im_start|>answer\nAnswer: 0.75<|im_end|>", correct=False)  # an old grader
    saved = tmp_path / "saved.jsonl"
    saved.write_text("".join(json.dumps(r) + "\n" for r in records))
    evaluate_benchmarks.main(["--regrade", str(saved), "--output_dir", str(tmp_path / "regraded")])
    regraded, _ = read_records(tmp_path / "regraded" / "predictions.jsonl")
    assert regraded[math]["correct"] is True and regraded[math]["extracted"] == "0.75"
    assert [r["generation"] for r in regraded] == [r["generation"] for r in records]
    accuracy = pd.read_csv(tmp_path / "regraded" / "accuracy.csv").set_index("benchmark")
    assert accuracy.loc["math500", "n_correct"] == sum(r["correct"] for r in regraded if r["benchmark"] == "math500")
    assert accuracy.loc["math500", "n_correct"] >= 1


@pytest.mark.parametrize("extra, message", [
    (["--benchmarks", "math5000"], "math5000"),
    (["--benchmarks", "aime24", "--data_files", str(FIXTURES / "gpqa_diamond.jsonl")], "'problem'"),  # GPQA as AIME
    (["--benchmarks", "math500", "--backend", "vllm"], "bash scripts/setup_env.sh eval"),
    (["--benchmarks", "heldout"], "--data_files heldout=PATH"),
])
def test_bad_input_exits_2_with_one_message(tiny_model_dir, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setitem(sys.modules, "vllm", None)  # this environment has no vLLM
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model_path", str(tiny_model_dir),
                                      "--output_dir", str(tmp_path), *extra])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_benchmarks.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("error:") == 1


def test_an_adapter_on_the_wrong_base_exits_2(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from test_provenance import save_adapter

    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    other_base = tmp_path / "other"
    other_base.mkdir()
    (other_base / "config.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model_path", str(adapter), "--base_model", str(other_base),
                                      "--benchmarks", "math500", "--data_files", str(FIXTURES / "math500.jsonl"),
                                      "--output_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_benchmarks.main)
    assert exit_info.value.code == 2 and "is not the base model of the adapter" in capsys.readouterr().err
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_the_script_exits_2_in_its_own_process(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--model_path", str(tmp_path), "--benchmarks", "aime25"],
                            cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "aime25" in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_series_gives_a_row_per_checkpoint_and_a_figure(tiny_model_dir, tmp_path):
    from test_provenance import save_adapter

    for step in (4, 2):
        save_adapter(tiny_model_dir, tmp_path / "dpo_run" / f"checkpoint-{step}", seed=step)
    output_dir = tmp_path / "out"
    evaluate_benchmarks.main(["--checkpoint_dir", str(tmp_path / "dpo_run"), "--include_base",
                              "--benchmarks", "aime24", "--data_files", str(FIXTURES / "aime24.jsonl"),
                              "--max_tokens", "4", "--output_dir", str(output_dir)])
    accuracy = pd.read_csv(output_dir / "accuracy.csv", dtype={"checkpoint": str})
    assert accuracy["model"].tolist() == ["dpo_run/base", "dpo_run/checkpoint-2", "dpo_run/checkpoint-4"]
    assert accuracy["step"].tolist() == [0, 2, 4] and set(accuracy["n"]) == {3}
    records = pd.DataFrame(read_records(output_dir / "predictions.jsonl")[0])
    generations = records.pivot(index="id", columns="model", values="generation")
    assert (generations["dpo_run/checkpoint-2"] != generations["dpo_run/base"]).any()  # the adapter is active
    plot = load_script("visualization", "plot_benchmark_accuracy")
    plot.main(["--results_dirs", str(output_dir), "--output_stem", str(tmp_path / "fig" / "accuracy")])
    assert (tmp_path / "fig" / "accuracy.png").stat().st_size > 1000


def test_a_model_retrained_at_the_same_path_is_not_resumed(tiny_model_dir, heldout, tmp_path):
    """Predictions resume per model label; before, another model's weights at the same path (and
    label) reused the old generations and the table mixed two models."""
    import shutil

    import torch

    from fwdrev.errors import UsageError
    from fwdrev.modeling import load_causal_lm

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    output_dir = tmp_path / "out"
    evaluate_benchmarks.main(flags(model_dir, heldout, output_dir))
    model = load_causal_lm(str(model_dir))
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    model.save_pretrained(model_dir)  # "retrained" into the same folder
    with pytest.raises(UsageError, match=r"\['tiny'\] generated from other weights"):
        evaluate_benchmarks.main(flags(model_dir, heldout, output_dir))


def test_a_benchmark_file_regenerated_at_the_same_path_is_not_resumed(tiny_model_dir, tmp_path):
    from fwdrev.errors import UsageError

    data = tmp_path / "test.parquet"
    generate_preference_rows(4, seed=2).to_parquet(data)
    evaluate_benchmarks.main(flags(tiny_model_dir, data, tmp_path / "out"))
    generate_preference_rows(4, seed=7).to_parquet(data)  # other problems, same ids
    with pytest.raises(UsageError, match=r"\['heldout'\] made from other data"):
        evaluate_benchmarks.main(flags(tiny_model_dir, data, tmp_path / "out"))
