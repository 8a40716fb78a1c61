"""The DPO reference log-prob cache: what its key covers, who decides, and how it is computed.

The stale-cache tests run the real script's main in-process with ``Trainer.train`` replaced by
the reference step alone (the cache is made before the first update; training is tested in
test_dpo.py), so each run takes seconds.
"""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, assert_mentions, free_port, load_script

from fwdrev.data import load_preference_data
from fwdrev.dpo_trainer import DPOArguments, DPOTrainer, PairCollator
from fwdrev.errors import UsageError
from fwdrev.logprobs import sequence_logprobs
from fwdrev.modeling import load_causal_lm, load_tokenizer
from fwdrev.rank_zero import decide_on_main_process
from fwdrev.reference import (
    REFERENCE_CACHE_KEY,
    ReferenceMode,
    check_reference_cache,
    length_sorted_shard,
    pair_length,
    write_reference_cache,
)
from fwdrev.tokenization import PairDataset, collate_pairs, encode_examples

SAMPLE = REPO_ROOT / "data-100samples.parquet"
RUN = ["--max_length", "160", "--max_prompt_length", "96", "--lora_r", "4", "--lora_alpha", "8",
       "--report_to", "none", "--eval_size", "0", "--max_steps", "1", "--save_strategy", "no",
       "--per_device_eval_batch_size", "4",
       "--overwrite_output_dir"]  # re-runs into one folder: where a stale cache would be picked up


@pytest.fixture
def small_data(tmp_path) -> Path:
    path = tmp_path / "data.parquet"
    pd.read_parquet(SAMPLE).head(4).to_parquet(path)
    return path


@pytest.fixture
def reference_only(monkeypatch):
    """Make ``DPOTrainer.train`` do its reference step only; ``global_step`` as on a resume."""
    step = {"global_step": 0}

    def train(self, resume_from_checkpoint=None):
        self.state.global_step = step["global_step"]
        with self.compute_loss_context_manager():  # as in training_step: the loss's autocast
            self.ensure_reference_logps(self.model)

    monkeypatch.setattr(DPOTrainer, "train", train)
    return step


def run_reference(model_dir, data, output_dir, *extra) -> pd.DataFrame:
    load_script("dpo", "combined_dpo").main(["--model_name", str(model_dir), "--train_file_path", str(data),
                                             "--output_dir", str(output_dir), *RUN, *extra])
    return pd.read_parquet(Path(output_dir) / "reference_logps.parquet").set_index("example_id")


def cache_key(output_dir) -> dict:
    return json.loads((Path(output_dir) / REFERENCE_CACHE_KEY).read_text())


def test_swapped_fields_rescore(tiny_model_dir, small_data, tmp_path, reference_only):
    first = run_reference(tiny_model_dir, small_data, tmp_path / "out")
    swapped = run_reference(tiny_model_dir, small_data, tmp_path / "out",
                            "--chosen_field", "worse-text", "--rejected_field", "text")
    assert swapped["chosen_logp_sum"].to_numpy() == pytest.approx(first["rejected_logp_sum"].to_numpy(), abs=1e-3)
    assert swapped["rejected_logp_sum"].to_numpy() == pytest.approx(first["chosen_logp_sum"].to_numpy(), abs=1e-3)
    assert (first["chosen_logp_sum"] - first["rejected_logp_sum"]).abs().max() > 1.0  # a real swap
    assert cache_key(tmp_path / "out")["chosen_field"] == "worse-text"


def test_data_regenerated_at_the_same_path_rescores(tiny_model_dir, small_data, tmp_path, reference_only):
    first = run_reference(tiny_model_dir, small_data, tmp_path / "out")
    frame = pd.read_parquet(small_data)
    frame[["text", "worse-text"]] = frame[["worse-text", "text"]].to_numpy()  # same path, rows and ids
    frame.to_parquet(small_data)
    second = run_reference(tiny_model_dir, small_data, tmp_path / "out")
    assert second["chosen_logp_sum"].to_numpy() == pytest.approx(first["rejected_logp_sum"].to_numpy(), abs=1e-3)


def test_model_resaved_with_other_weights_rescores(tiny_model_dir, small_data, tmp_path, reference_only):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    first = run_reference(model_dir, small_data, tmp_path / "out")
    model = load_causal_lm(str(model_dir))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(model_dir)  # e.g. SFT re-run into the same checkpoint folder
    second = run_reference(model_dir, small_data, tmp_path / "out")
    fresh = run_reference(model_dir, small_data, tmp_path / "fresh")
    assert (second["chosen_logp_sum"] - first["chosen_logp_sum"]).abs().min() > 1e-2
    assert second.to_numpy() == pytest.approx(fresh.to_numpy(), abs=1e-5)


def test_bf16_toggle_rescores(tiny_model_dir, small_data, tmp_path, reference_only):
    fp32 = run_reference(tiny_model_dir, small_data, tmp_path / "out")
    bf16 = run_reference(tiny_model_dir, small_data, tmp_path / "out", "--bf16")
    assert (bf16 - fp32).abs().to_numpy().max() > 1e-3  # bf16 weights score differently
    assert cache_key(tmp_path / "out")["weight_dtypes"] == ["torch.bfloat16", "torch.float32"]  # fp32 adapter
    assert bf16.to_numpy() == pytest.approx(fp32.to_numpy(), rel=0.01)


def test_the_weights_real_dtype_is_in_the_key(tiny_model_dir, small_data, tmp_path, reference_only, monkeypatch):
    """--bf16 gives float32 weights under autocast without DeepSpeed and bf16 weights under it:
    the same flags, other log-probs, so the cache of one is not the other's."""
    from fwdrev import training

    full_bf16 = ["--no_use_lora", "--bf16"]
    autocast = run_reference(tiny_model_dir, small_data, tmp_path / "out", *full_bf16)
    autocast_key = cache_key(tmp_path / "out")
    monkeypatch.setattr(training, "optimizer_owns_weights", lambda args: False)  # weights as DeepSpeed keeps them
    bf16_weights = run_reference(tiny_model_dir, small_data, tmp_path / "out", *full_bf16)
    assert (bf16_weights - autocast).abs().to_numpy().max() > 1e-3  # rescored, not reused
    assert [autocast_key.get("weight_dtypes"), autocast_key.get("autocast_dtype")] == [
        ["torch.float32"], "torch.bfloat16"]
    assert cache_key(tmp_path / "out")["weight_dtypes"] == ["torch.bfloat16"]


def test_a_change_of_the_scoring_rules_rescores(tiny_model_dir, small_data, tmp_path, reference_only, monkeypatch):
    from fwdrev import reference

    first = run_reference(tiny_model_dir, small_data, tmp_path / "out")
    write_reference_cache(tmp_path / "out", first.assign(chosen_logp_sum=-1.0), cache_key(tmp_path / "out"))
    newer_rules = getattr(reference, "SCORING_RULES_VERSION", 0) + 1
    monkeypatch.setattr(reference, "SCORING_RULES_VERSION", newer_rules, raising=False)
    again = run_reference(tiny_model_dir, small_data, tmp_path / "out")
    assert (again["chosen_logp_sum"] != -1.0).all()  # the cache of the old rules is not reused


def test_changed_key_on_resume(tiny_model_dir, small_data, tmp_path, reference_only, capsys):
    """The initial policy cannot be re-scored once trained: exit-2 error naming the differing
    fields. A fresh adapter switched off can: it is re-scored, and the log says why."""
    swapped = ["--chosen_field", "worse-text", "--rejected_field", "text"]
    run_reference(tiny_model_dir, small_data, tmp_path / "full", "--no_use_lora")
    reference_only["global_step"] = 2
    with pytest.raises(UsageError, match="chosen_field, rejected_field.*--no_precompute_ref_log_probs"):
        run_reference(tiny_model_dir, small_data, tmp_path / "full", "--no_use_lora", *swapped)

    reference_only["global_step"] = 0
    first = run_reference(tiny_model_dir, small_data, tmp_path / "lora")
    reference_only["global_step"] = 2
    capsys.readouterr()
    second = run_reference(tiny_model_dir, small_data, tmp_path / "lora", *swapped)
    assert_mentions(capsys.readouterr().out, "chosen_field, rejected_field")
    assert second["chosen_logp_sum"].to_numpy() == pytest.approx(first["rejected_logp_sum"].to_numpy(), abs=1e-3)


def test_unchanged_settings_reuse_the_cache(tiny_model_dir, small_data, tmp_path, reference_only):
    first = run_reference(tiny_model_dir, small_data, tmp_path / "out")
    marked = first.assign(chosen_logp_sum=-1.0)  # a reused cache shows this value
    write_reference_cache(tmp_path / "out", marked, cache_key(tmp_path / "out"))
    again = run_reference(tiny_model_dir, small_data, tmp_path / "out")
    assert (again["chosen_logp_sum"] == -1.0).all()


def test_reference_mode_is_chosen_once():
    class Args:
        def __init__(self, **values):
            self.__dict__.update(values)

    choose = lambda lora, adapter, precompute: ReferenceMode.choose(  # noqa: E731
        Args(use_lora=lora, init_adapter=adapter), Args(precompute_ref_log_probs=precompute))
    assert choose(True, None, True) is choose(True, None, False) is ReferenceMode.ADAPTER_OFF
    assert choose(True, "sft", True) is choose(False, None, True) is ReferenceMode.INITIAL_POLICY
    assert choose(True, "sft", False) is choose(False, None, False) is ReferenceMode.FROZEN_COPY
    assert [m.needs_ref_model for m in ReferenceMode] == [False, False, True]
    assert [m.scorable_after_updates for m in ReferenceMode] == [True, False, True]


# ---- every rank follows rank 0 -------------------------------------------------------------
def _decide_on_two_ranks(rank, port, folders, results):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=2)
    try:
        decision = decide_on_main_process(lambda: check_reference_cache(folders[rank], {"k": 1}, [0, 1]),
                                          rank, 2)
        frame = None if decision.frame is None else decision.frame.reset_index()
        pd.to_pickle((decision.reason, frame), results[rank])
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_follow_rank_0s_cache_decision(tmp_path):
    """Rank 0 sees a valid cache, rank 1 sees none (e.g. another node): both use rank 0's."""
    frame = pd.DataFrame({"example_id": [0, 1], "chosen_logp_sum": [-3.0, -4.0]}).set_index("example_id")
    write_reference_cache(tmp_path / "rank0", frame, {"k": 1})
    (tmp_path / "rank1").mkdir()
    folders = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    results = [str(tmp_path / f"result{rank}.pkl") for rank in range(2)]
    torch.multiprocessing.spawn(_decide_on_two_ranks, args=(free_port(), folders, results), nprocs=2)
    for result in results:
        reason, got = pd.read_pickle(result)
        assert "loaded from" in reason and got["chosen_logp_sum"].tolist() == [-3.0, -4.0]


def test_decision_runs_on_rank_0_only():
    sent = [("rank 0's decision",)]
    fake_broadcast = lambda holder: holder.__setitem__(0, sent[0])  # noqa: E731
    never = lambda: pytest.fail("rank 1 decided on its own")  # noqa: E731
    assert decide_on_main_process(never, 1, 2, fake_broadcast) == ("rank 0's decision",)
    assert decide_on_main_process(lambda: "mine", 0, 2, lambda holder: None) == "mine"


# ---- sorted, batched precompute --------------------------------------------------------------
def test_length_sorted_shards_cover_every_pair_longest_first(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = encode_examples(tokenizer, load_preference_data(SAMPLE, tokenizer=tokenizer).examples[:7], 256, 128)
    for world in (1, 2, 3):
        shards = [length_sorted_shard(pairs, rank, world) for rank in range(world)]
        assert {len(shard) for shard in shards} == {-(-7 // world)}  # same number of passes
        assert {p.example_id for shard in shards for p in shard} == {p.example_id for p in pairs}
        for shard in shards:
            lengths = [pair_length(p) for p in shard]
            assert lengths == sorted(lengths, reverse=True)


def test_batched_sorted_reference_equals_one_pair_at_a_time(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = encode_examples(tokenizer, load_preference_data(SAMPLE, tokenizer=tokenizer).examples[:9], 256, 128)
    model = load_causal_lm(str(tiny_model_dir)).eval()
    args = DPOArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", ref_batch_size=4,
                        precompute_ref_log_probs=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=PairDataset(pairs),
                         data_collator=PairCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                         reference_mode=ReferenceMode.INITIAL_POLICY, reference_key={"test": 1})
    batched = trainer._compute_reference_logps(model)
    with torch.no_grad():
        for pair in pairs:  # file order, batch 1: no padding
            batch = collate_pairs([pair], tokenizer.pad_token_id)
            out = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            row = batched.loc[pair.example_id]
            assert [row["chosen_logp_sum"], row["rejected_logp_sum"]] == pytest.approx(out.sum.tolist(), abs=1e-3)
            assert [row["chosen_logp_mean"], row["rejected_logp_mean"]] == pytest.approx(out.mean.tolist(), abs=1e-5)
    assert len({pair_length(p) for p in pairs}) > 1  # padding did happen in the batches
