"""Build a tiny random-init Qwen2 causal LM + locally trained byte-level BPE tokenizer (offline, seconds).

From the repo root (after generating r1k.parquet, see scripts/make_sample_data.py):

    python scripts/make_tiny_model.py                      # -> ./models/tiny-qwen
    python scripts/make_tiny_model.py --output_dir /tmp/tq --hidden_size 64 --num_layers 2

The result loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained(output_dir).
"""

import argparse

import pandas as pd

from fwdrev.tiny_model import DEFAULT_SIZES, build_and_save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="r1k.parquet", help="parquet whose text / worse-text train the tokenizer")
    parser.add_argument("--output_dir", default="./models/tiny-qwen")
    parser.add_argument("--vocab_size", type=int, default=2048, help="upper bound; small corpora stop earlier")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in DEFAULT_SIZES.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()

    frame = pd.read_parquet(args.data, columns=["text", "worse-text"])
    texts = list(frame["text"]) + list(frame["worse-text"])
    sizes = {name: getattr(args, name) for name in DEFAULT_SIZES}
    build_and_save(args.output_dir, texts, vocab_size=args.vocab_size, seed=args.seed, **sizes)
    print(f"saved tiny model and tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()
