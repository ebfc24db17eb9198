"""Compiling Triton prefill-attention variants (imports the real triton lazily, absolute imports only)."""
