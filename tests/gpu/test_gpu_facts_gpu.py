"""What the warmer reads of the GPU without torch, against what torch and vLLM read:

- NVML's model, SM and memory (kernel_warmer/gpu.py, what the cache key's FlashInfer plan is
  made for) give the same plan inputs as torch's device properties, which vLLM's default
  ``--max-num-batched-tokens`` is computed from (EngineArgs.get_batch_defaults uses
  ``current_platform.get_device_total_memory()``, torch's total_memory);
- the shared memory per block compile-only answers for this SM (vLLM 0.34's tile fitting)
  is the device's own ``cudaDevAttrMaxSharedMemoryPerBlockOptin``, which vLLM's compiled op
  reads (torch exposes the same attribute).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from kernel_warmer import gpu, versions  # noqa: E402
from kernel_warmer.triton.providers import shared_memory_bytes  # noqa: E402

pytestmark = pytest.mark.gpu


def test_nvml_facts_give_the_plan_torch_would():
    facts = gpu.probe()
    assert facts is not None, "NVML (libnvidia-ml.so.1) is not loadable on this GPU machine"
    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    assert facts.sm == major * 10 + minor
    assert facts.name == props.name
    assert facts.count == torch.cuda.device_count()
    for row in versions.VLLM:  # the batch default each release computes, from either reading
        assert (row.default_max_num_batched_tokens(facts.memory_bytes, facts.name, facts.sm)
                == row.default_max_num_batched_tokens(props.total_memory, props.name, facts.sm)), row.label
    print(f"NVML: {facts}; torch total_memory {props.total_memory}")


def test_compile_only_shared_memory_is_the_devices():
    major, minor = torch.cuda.get_device_capability(0)
    assert shared_memory_bytes(major * 10 + minor) == torch.cuda.get_device_properties(0).shared_memory_per_block_optin
