"""The FlashInfer phase's CPU-checkable parts: the env key and the not-installed path."""

from __future__ import annotations

import importlib.util

import pytest

from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.flashinfer.phase import run_phase
from kernel_warmer.flashinfer.tune import METADATA_FIELDS, env_key
from kernel_warmer.plan.model import AttentionLayer, ModelArch
from kernel_warmer.spec import ModelSource, WarmerSpec

META = {"flashinfer_version": "0.6.18", "cuda_version": "13.0", "cublas_version": "13.1.0",
        "cudnn_version": "91500", "cudnn_frontend_version": "1.32.0", "gpu": "NVIDIA H200"}


def test_env_key_is_stable_readable_and_covers_every_field():
    key = env_key(META)
    assert key == env_key(dict(reversed(list(META.items()))))
    assert key.startswith("fi0.6.18-nvidia-h200-") and "/" not in key and " " not in key
    for f in METADATA_FIELDS:
        assert env_key({**META, f: META[f] + "x"}) != key, f


def test_without_flashinfer_the_phase_reports_skipped(tmp_path):
    if importlib.util.find_spec("flashinfer") is not None:
        pytest.skip("flashinfer is installed here")
    spec = WarmerSpec(model=ModelSource(config_path="/x/config.json"))
    arch = ModelArch("llama", "bfloat16", 4096, 14336, 1, [AttentionLayer(0, 32, 8, 128, 128 ** -0.5)])
    out = run_phase(spec, arch, CacheLayout(tmp_path), lambda s: None)
    assert out == {"status": "skipped: flashinfer not installed"}
