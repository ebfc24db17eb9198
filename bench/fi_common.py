"""Shared bits of the FlashInfer benches: the model, the spec, logging to $OUT."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "initcontainer"))

# Meta-Llama-3-8B's config.json (the shapes are what matter).
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "torch_dtype": "bfloat16", "vocab_size": 128256,
}


def out_dir() -> Path:
    d = Path(os.environ.get("OUT") or "/tmp/kw-bench-out")
    d.mkdir(parents=True, exist_ok=True)
    return d


class Log:
    def __init__(self, name: str):
        self.path = out_dir() / name
        self.f = open(self.path, "a")

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self.f.write(line + "\n")
        self.f.flush()
        print(line, file=sys.stderr, flush=True)


def llama_arch():
    from kernel_warmer.plan.model import load_arch

    return load_arch(LLAMA3_8B)


def card() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


def dump(name: str, data: dict) -> None:
    (out_dir() / name).write_text(json.dumps(data, indent=2, default=str))
