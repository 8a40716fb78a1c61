"""The data flags are defined once (DataArguments): the analysis scripts' argparse takes them over."""

import argparse
import dataclasses

from helpers import load_script

from fwdrev.data import RowSelection
from fwdrev.data_arguments import LENGTH_FLAGS, ROW_FLAGS, DataArguments, add_data_flags
from fwdrev.score_keys import CONTENT_FLAGS
from fwdrev.scoring_cli import add_scoring_arguments

FIELDS = {f.name: f for f in dataclasses.fields(DataArguments)}


def flag_actions(parser: argparse.ArgumentParser) -> dict:
    return {action.dest: action for action in parser._actions}


def test_analysis_flags_have_the_training_defaults_and_help():
    parser = argparse.ArgumentParser()
    add_scoring_arguments(parser)
    actions = flag_actions(parser)
    for name in ROW_FLAGS + LENGTH_FLAGS:
        assert actions[name].default == FIELDS[name].default, name
        assert actions[name].help == FIELDS[name].metadata["help"], name
    assert actions["flipped_prompt_field"].default == "relevant-question"
    assert actions["max_prompt_length"].default is None and actions["max_length"].default == 20000


def test_analysis_flags_parse_to_the_training_types():
    parser = argparse.ArgumentParser()
    add_data_flags(parser)
    args = parser.parse_args(["--max_length", "300", "--max_prompt_length", "100", "--drop_invalid_rows",
                              "--sample_types", "flipped", "--flipped_prompt_field", ""])
    assert (args.max_length, args.max_prompt_length, args.drop_invalid_rows) == (300, 100, True)
    assert (args.sample_types, args.flipped_prompt_field, args.prompt_field) == ("flipped", "", "question")
    assert parser.parse_args([]).drop_invalid_rows is False


def test_benchmark_evaluation_reads_heldout_rows_like_training():
    args = load_script("analysis", "evaluate_benchmarks").parse_args(["--model_path", "m"])
    for name in ROW_FLAGS:
        assert getattr(args, name) == FIELDS[name].default, name
    assert not hasattr(args, "max_length")  # generation: its own budget (--max_tokens)


def test_one_row_selection_from_training_and_analysis_flags():
    parser = argparse.ArgumentParser()
    add_data_flags(parser)
    analysis = RowSelection.from_args(parser.parse_args([]))
    assert analysis == RowSelection.from_args(DataArguments(train_file_path="d.parquet")) == RowSelection()
    assert ROW_FLAGS == tuple(f.name for f in dataclasses.fields(RowSelection))
    flipped = RowSelection.from_args(parser.parse_args(["--sample_types", "flipped", "--chosen_field", "y"]),
                                     sample_types=None)
    assert (flipped.sample_types, flipped.chosen_field) == (None, "y")  # a change is not read from the flags
    dynamics = load_script("analysis", "analyze_training_dynamics")
    for settings in (CONTENT_FLAGS, dynamics.SETTINGS_FLAGS):  # the keys of a score table's settings
        assert set(ROW_FLAGS + LENGTH_FLAGS) <= set(settings) and len(set(settings)) == len(settings)
