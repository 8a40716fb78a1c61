"""Generate the synthetic forward/reverse arithmetic preference set (offline, deterministic).

The two files shipped at the repo top level were made from the repo root with:

    python scripts/make_sample_data.py --num_rows 100 --seed 0 --output data-100samples.parquet
    python scripts/make_sample_data.py --num_rows 1000 --seed 0 --output r1k.parquet

See fwdrev/devtools/synthetic.py for the task and the row layout.
"""

import argparse

from fwdrev.cli import run_cli
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.io import write_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_rows", type=int, default=100, help="even: one original + one flipped row per problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="data-100samples.parquet")
    args = parser.parse_args()
    if not args.output.endswith(".parquet"):
        parser.error(f"--output must name a .parquet file, got {args.output}")

    frame = generate_preference_rows(args.num_rows, args.seed)
    write_table(frame, args.output)
    print(f"wrote {len(frame)} rows ({args.num_rows // 2} problems) to {args.output}")


if __name__ == "__main__":
    run_cli(main)
