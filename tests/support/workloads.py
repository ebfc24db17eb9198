"""Small KernelWarmup specs and pod templates for the operator's unit tests."""

from __future__ import annotations


def spec_doc(**over):
    base = {"targets": {"selector": {"matchLabels": {"app": "vllm"}}}, "model": {"configPath": "/models/m/config.json"}}
    base.update(over)
    return base


def container(name="vllm", gpus=1, **extra):
    c = {"name": name, "image": "vllm/vllm-openai:v0.11.0", "args": ["--model", "/models/m"]}
    if gpus:
        c["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    c.update(extra)
    return c


def template(*containers, **spec_extra):
    return {"metadata": {"labels": {"app": "vllm"}}, "spec": {"containers": list(containers), **spec_extra}}
