"""Benchmark evaluation as s1 (and the study) ran it: AIME24, MATH500, GPQA Diamond and the
held-out split; greedy generation with optional budget forcing on the ``hf`` or ``vllm`` backend;
math-verify grading; resumable per-example records; accuracy tables with bootstrap CIs.

Modules: tasks (benchmarks, prompts), sources (hub or local data), forcing (the generation
rules, shared by both backends), hf_backend, vllm_backend, grading, records (JSONL), runner,
models (which models, loaded how), summary (tables, CIs, paired differences).
"""
