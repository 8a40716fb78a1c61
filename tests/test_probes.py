"""In-training log-prob probes: rows at steps 0, N, 2N with the scorer's values; resume-safe."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from transformers import Trainer, TrainingArguments

from fwdrev.data import load_preference_data
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.modeling import load_causal_lm, load_tokenizer
from fwdrev.probes import DYNAMICS_COLUMNS, build_probe_callback, select_probe_pairs
from fwdrev.tokenization import encode_examples, pad_sequences, prompt_response_sequence

PROBE_EVERY, MAX_STEPS = 2, 4


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """Tokenizer, a 10-row data file, its train / eval pairs and the probe flags."""
    path = tmp_path_factory.mktemp("probe-data") / "rows.parquet"
    generate_preference_rows(10, seed=2).to_parquet(path)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_preference_data(path, tokenizer=tokenizer)
    pairs = encode_examples(tokenizer, data.examples, max_length=256, max_prompt_length=128)
    data_args = SimpleNamespace(probe_file=None, probe_every=PROBE_EVERY, probe_size=3,
                                train_file_path=str(path), prompt_field="question",
                                flipped_prompt_field="relevant-question",
                                chosen_field="text", rejected_field="worse-text",
                                sample_types=None, drop_invalid_rows=False, max_length=256,
                                max_prompt_length=128)
    return SimpleNamespace(tokenizer=tokenizer, train=pairs[:8], eval=pairs[8:], data_args=data_args)


def full_logits_response_logps(model, prompt_ids, response_ids) -> torch.Tensor:
    """log p of each response token from one full-logits forward pass (no chunking, no padding)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    return logps.gather(-1, ids[0, 1:, None])[len(prompt_ids) - 1 :, 0]  # position t predicts t + 1


def train(tiny_model_dir, setup, output_dir, resume_from_checkpoint=None):
    """A few steps of plain causal-LM training on the chosen responses, with the probe callback."""
    tokenizer = setup.tokenizer
    callback = build_probe_callback(setup.data_args, tokenizer, setup.train, setup.eval, output_dir)

    def collate(pairs):
        return pad_sequences([prompt_response_sequence(p.prompt_ids, p.chosen_ids) for p in pairs],
                             tokenizer.pad_token_id)

    args = TrainingArguments(output_dir=str(output_dir), max_steps=MAX_STEPS, per_device_train_batch_size=2,
                             learning_rate=5e-3, use_cpu=True, report_to=[], save_strategy="steps",
                             save_steps=PROBE_EVERY, logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=load_causal_lm(str(tiny_model_dir)), args=args, train_dataset=setup.train,
                      data_collator=collate, callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return pd.read_csv(output_dir / "dynamics.csv")


def test_probe_rows_at_steps_0_n_2n_and_resume(tiny_model_dir, setup, tmp_path):
    rows = train(tiny_model_dir, setup, tmp_path)
    assert list(rows.columns) == DYNAMICS_COLUMNS
    assert sorted(rows["step"].unique()) == [0, PROBE_EVERY, 2 * PROBE_EVERY]
    per_step = rows.groupby("step")["split"].value_counts().unstack()
    assert per_step["train"].tolist() == [3, 3, 3] and per_step["eval"].tolist() == [2, 2, 2]
    assert set(rows["sample_type"]) <= {"original", "flipped"}

    # step-0 rows are the untrained model's log-probs, computed here the slow, obvious way
    probes = select_probe_pairs(setup.train, setup.eval, 3, seed=0)
    untrained = load_causal_lm(str(tiny_model_dir)).eval()
    at_start = rows[(rows["step"] == 0) & (rows["split"] == "train")]
    assert at_start["example_id"].tolist() == [p.example_id for p in probes["train"]]
    for pair, row in zip(probes["train"], at_start.to_dict("records")):
        chosen = full_logits_response_logps(untrained, pair.prompt_ids, pair.chosen_ids)
        rejected = full_logits_response_logps(untrained, pair.prompt_ids, pair.rejected_ids)
        assert row["chosen_logp_sum"] == pytest.approx(chosen.sum().item(), abs=1e-3)
        assert row["rejected_logp_sum"] == pytest.approx(rejected.sum().item(), abs=1e-3)
        assert row["chosen_logp_mean"] == pytest.approx(chosen.mean().item(), abs=1e-5)
        assert row["rejected_logp_mean"] == pytest.approx(rejected.mean().item(), abs=1e-5)
        assert row["delta_logp_mean"] == pytest.approx((chosen.mean() - rejected.mean()).item(), abs=1e-5)
    later = rows[(rows["step"] == MAX_STEPS) & (rows["split"] == "train")]
    assert not later["chosen_logp_mean"].to_numpy() == pytest.approx(at_start["chosen_logp_mean"].to_numpy())

    # resuming from step N redoes the rows after N once, keeps those up to N
    resumed = train(tiny_model_dir, setup, tmp_path, resume_from_checkpoint=str(tmp_path / f"checkpoint-{PROBE_EVERY}"))
    assert len(resumed) == len(rows)
    assert not resumed.duplicated(["step", "split", "example_id"]).any()
    pd.testing.assert_frame_equal(resumed[resumed["step"] <= PROBE_EVERY], rows[rows["step"] <= PROBE_EVERY])


def test_probe_file_is_loaded_like_the_training_data(setup, tmp_path):
    probe_path = tmp_path / "probe.parquet"
    generate_preference_rows(4, seed=9).to_parquet(probe_path)
    # a forward-only run (--sample_types original) is still probed on every probe row
    data_args = SimpleNamespace(**{**vars(setup.data_args), "probe_file": str(probe_path),
                                   "sample_types": "original"})
    callback = build_probe_callback(data_args, setup.tokenizer, setup.train, setup.eval, tmp_path)
    assert list(callback.probe_pairs) == ["probe"]
    assert [p.example_id for p in callback.probe_pairs["probe"]] == [0, 1, 2, 3]
    assert callback.sample_types == {0: "original", 1: "original", 2: "flipped", 3: "flipped"}


def test_select_probe_pairs_is_a_fixed_sample(setup):
    first = select_probe_pairs(setup.train, setup.eval, 3, seed=5)
    assert first == select_probe_pairs(setup.train, setup.eval, 3, seed=5)
    assert len(first["train"]) == 3 and len(first["eval"]) == 2  # only 2 eval rows exist
    assert [p.example_id for p in first["train"]] == sorted(p.example_id for p in first["train"])
    assert list(select_probe_pairs(setup.train, [], 3)) == ["train"]
