"""The in-pod warmer: compiles Triton prefill-attention variants and tunes FlashInfer
into a cache volume before the serving container starts."""

__version__ = "0.1.0"
