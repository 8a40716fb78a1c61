"""Split a preference file into train.parquet and test.parquet by problem.

Both rows of a problem (the `original` forward row and its `flipped` reverse row) land on the
same side, so the test sets T_f (original rows) and T_r (flipped rows) hold unseen problems.

    python scripts/prepare_data.py --input r1k.parquet --output_dir ./data/quickstart \
        --test_groups 50 --train_groups 200
"""

import argparse
import os

from fwdrev.cli import run_cli
from fwdrev.data import read_table
from fwdrev.io import write_table
from fwdrev.splits import split_by_group


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="Parquet or JSONL preference file.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--test_groups", type=int, default=50, help="Problems held out for testing.")
    parser.add_argument("--train_groups", type=int, default=None, help="Cap on training problems.")
    parser.add_argument("--group_column", default=None,
                        help="Column identifying a problem (default: problem_id, else question).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    frame = read_table(args.input)
    try:
        train, test = split_by_group(frame, args.test_groups, args.seed, args.group_column, args.train_groups)
    except ValueError as error:  # group counts or column that do not fit this file
        parser.error(f"{args.input}: {error}")
    for name, part in (("train", train), ("test", test)):
        path = os.path.join(args.output_dir, f"{name}.parquet")
        write_table(part.reset_index(drop=True), path)
        counts = part["sample_type"].value_counts().to_dict() if "sample_type" in part else {}
        print(f"{path}: {len(part)} rows {counts}")


if __name__ == "__main__":
    run_cli(main)
