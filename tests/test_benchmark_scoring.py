"""The whole-process scoring benchmark on the tiny model: the analysis, the original's method
(full logits + per-position log_softmax) and --score_tokens agree; figures are measured."""

import pytest
from helpers import load_script

from fwdrev.devtools.synthetic import generate_preference_rows

benchmark_scoring = load_script("scripts", "benchmark_scoring")
benchmark_logprobs = load_script("scripts", "benchmark_logprobs")


@pytest.mark.slow
def test_whole_process_benchmark_values_agree(tiny_model_dir, tmp_path):
    data_path = tmp_path / "rows.parquet"
    generate_preference_rows(4, seed=5).to_parquet(data_path)
    rows, facts = benchmark_scoring.run_benchmark(benchmark_scoring.parse_args(
        ["--model_path", str(tiny_model_dir), "--dataset_path", str(data_path), "--rows", "2", "--repeats", "1",
         "--max_tokens", "4", "--methods", "original,analysis,analysis_first4,analysis_mb1,analysis_chunk3"]))
    by_method = {row["method"]: row for row in rows}
    assert facts["examples"] == 2 and facts["response_tokens"] > 8
    assert by_method["original"]["comparison"] is None
    assert by_method["analysis"]["comparison"]["against"] == "original"
    assert by_method["analysis"]["comparison"]["max_rel_diff"] <= 1e-4
    assert by_method["analysis_first4"]["comparison"]["against"] == "analysis"
    assert by_method["analysis_first4"]["comparison"]["max_rel_diff"] <= 1e-6
    assert by_method["analysis_mb1"]["comparison"]["max_rel_diff"] <= 1e-4
    assert by_method["analysis_chunk3"]["comparison"]["max_rel_diff"] <= 1e-4
    table = benchmark_scoring.format_table(rows).splitlines()
    assert len(table) == 2 + 5 and table[2].startswith("| original |") and "| 1.00x | 1.00x | 1.000x |" in table[2]
    for row in rows:
        assert row["seconds"] > 0 and row["cpu_seconds"] > 0 and 0.1 < row["peak_rss_gb"] < 20


def test_benchmark_logprobs_hands_whole_process_runs_to_benchmark_scoring(capsys):
    with pytest.raises(SystemExit) as stop:
        benchmark_logprobs.main(["--whole_process", "--help"])
    assert stop.value.code == 0 and "analysis_first<K>" in capsys.readouterr().out
