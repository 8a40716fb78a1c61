"""Development fixtures and tools, not part of the library: the tiny test model and its tokenizers
(``tiny_model``, ``qwen_tokenizer``), synthetic preference rows (``synthetic``) and the GPU
memory/throughput check (``gpu_check``). The library modules never import these."""
