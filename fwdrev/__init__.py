"""Shared library: data, tokenization, log-probs, models, DPO loss, scoring, plotting scale."""
