"""An analysis tree's probe tables as one SFT -> DPO series, and the sentence describing DPO's shift."""

import numpy as np
import pandas as pd
import pytest

from fwdrev.probe_tables import describe_shift, dpo_shift, find_series, probe_means, read_series


def probe_frame(stage: str, checkpoints: list[tuple[str, int]], y_minus: list[float]) -> pd.DataFrame:
    rows = []
    for (name, epoch), value in zip(checkpoints, y_minus):
        for probe, logp in (("y-", value), ("argmax_along_y-", -value / 10), ("y+", -1.0)):
            for example_id, sample_type in ((0, "original"), (1, "flipped")):
                rows.append({"checkpoint": name, "stage": stage, "epoch": epoch, "example_id": example_id,
                             "sample_type": sample_type, "probe": probe, "logp_mean": logp})
    return pd.DataFrame(rows)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "m" / "sft").mkdir(parents=True)
    (tmp_path / "m" / "dpo").mkdir(parents=True)
    probe_frame("sft", [("base", 0), ("1", 1), ("2", 2)], [-3.0, -2.0, -1.5]).to_parquet(
        tmp_path / "m" / "sft" / "probes.parquet")
    probe_frame("dpo", [("base", 0), ("checkpoint-4", 1), ("checkpoint-8", 2)], [-1.5, -2.5, -4.0]).to_parquet(
        tmp_path / "m" / "dpo" / "probes.parquet")
    return tmp_path


def test_series_positions_continue_from_sft_into_dpo(tree):
    paths = find_series(tree)
    assert set(paths) == {"m"} and set(paths["m"]) == {"sft", "dpo"}
    series = read_series(paths["m"])
    positions = series.drop_duplicates("label").set_index("label")["x"]
    assert positions.dropna().to_dict() == {"sft:base": 0, "sft:1": 1, "sft:2": 2, "dpo:checkpoint-4": 3,
                                            "dpo:checkpoint-8": 4}
    assert np.isnan(positions["dpo:base"])  # the last SFT epoch again: not drawn twice
    means = probe_means(series)
    assert len(means) == 3 * 2 * 5  # probes x test sets x drawn checkpoints


def test_dpo_shift_from_the_last_sft_epoch_and_the_sentence(tree):
    shift = dpo_shift(read_series(find_series(tree)["m"]))
    assert shift["y-"] == pytest.approx(-4.0 - -1.5)
    assert shift["argmax_along_y-"] == pytest.approx(0.4 - 0.15)
    assert shift["y+"] == pytest.approx(0.0)
    sentence = describe_shift("m", shift)
    assert "y- -2.500" in sentence and "rose: argmax_along_y-" in sentence
    assert describe_shift("m", None) == "D_m: no DPO checkpoints with probes."


def test_dpo_shift_starts_at_the_dpo_series_own_base(tree):
    """self_greedy differs between the series (each its own starting model's response)."""
    dpo = pd.read_parquet(tree / "m" / "dpo" / "probes.parquet")
    dpo.loc[(dpo["probe"] == "y+") & (dpo["checkpoint"] == "base"), "logp_mean"] = -5.0
    dpo.to_parquet(tree / "m" / "dpo" / "probes.parquet")
    assert dpo_shift(read_series(find_series(tree)["m"]))["y+"] == pytest.approx(-1.0 - -5.0)
