"""Warmer arguments that reach a call site the builtin (causal) kernel can compile, for the
tests of cache mechanics that run compile-only on this CPU: the seed fork's decoder prefill
(TRITON_ATTN with an nvfp4 KV cache). vLLM's own kernel is exercised by
tests/unit/test_triton_providers.py and tests/gpu/test_vllm_fidelity.py."""

FORK_SERVE = "vllm serve m --attention-backend TRITON_ATTN --kv-cache-dtype nvfp4"
FORK_SITE = ("--serve-command", FORK_SERVE, "--provider", "builtin")
