"""kernel_warmer.engine: what a container's `vllm serve` command sets (the flags of vLLM 0.26-0.34;
the per-release defaults are tests/unit/test_versions.py)."""

import pytest

from kernel_warmer.engine import (
    EngineArgError,
    find_serve_args,
    merge_into_spec,
    parse_serve,
)

GIB = 1 << 30

# (command, args, env) -> expected settings (only what the command sets)
CASES = [
    pytest.param(["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "-tp", "2", "--dtype", "bfloat16"], [], None,
                 {"model": "meta-llama/Llama-3.1-8B-Instruct", "tensorParallelSize": 2, "dtype": "bfloat16"},
                 id="vllm-serve-short-tp"),
    pytest.param(["vllm"], ["serve", "m", "--tensor_parallel_size=4", "--max_num_batched_tokens", "2048"], None,
                 {"model": "m", "tensorParallelSize": 4, "flashinfer.maxNumBatchedTokens": 2048},
                 id="underscores-and-equals"),
    pytest.param([], ["Qwen/Qwen3-30B-A3B", "--enable-expert-parallel", "--moe-backend", "FlashInfer-Cutlass"], None,
                 {"model": "Qwen/Qwen3-30B-A3B", "engine.enableExpertParallel": True, "engine.moeBackend": "flashinfer_cutlass"},
                 id="image-entrypoint-args-only"),
    pytest.param(["python3", "-m", "vllm.entrypoints.openai.api_server"], ["--model", "m", "-tp=2", "-q", "fp8"], None,
                 {"model": "m", "tensorParallelSize": 2, "engine.quantization": "fp8"}, id="api-server-module"),
    pytest.param(["/bin/sh", "-c", "exec vllm serve BAAI/bge-m3 --runner pooling --attention-backend triton_attn"],
                 [], None, {"model": "BAAI/bge-m3", "engine.runner": "pooling", "engine.attentionBackend": "TRITON_ATTN"},
                 id="shell-form"),
    pytest.param(["vllm", "serve", "m", "--attention-config", '{"backend": "TRITON_ATTN"}',
                  "--kv-cache-dtype", "int8_per_token_head"], [], None,
                 {"model": "m", "engine.attentionBackend": "TRITON_ATTN", "engine.kvCacheDtype": "int8_per_token_head"},
                 id="attention-config-json"),
    pytest.param(["vllm", "serve", "m", "-ac.backend=TRITON_ATTN"], [], None,
                 {"model": "m", "engine.attentionBackend": "TRITON_ATTN"}, id="attention-config-dotted"),
    pytest.param(["vllm", "serve", "Qwen/Qwen2.5-VL-7B-Instruct", "--mm-encoder-attn-backend", "TRITON_ATTN",
                  "--mm-encoder-tp-mode", "data"], [], None,
                 {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "engine.mmEncoderAttnBackend": "TRITON_ATTN",
                  "engine.mmEncoderTpMode": "data"}, id="vit-backend"),
    pytest.param(["vllm", "serve", "m", "--no-enable-flashinfer-autotune", "--disable-expert-parallel"], [], None,
                 {"model": "m", "engine.flashinferAutotune": False, "engine.enableExpertParallel": False}, id="negated-bools"),
    pytest.param(["vllm", "serve", "m", "-O0"], [], None,
                 {"model": "m", "engine.flashinferAutotune": False}, id="O0-no-autotune"),
    pytest.param(["vllm", "serve", "m", "--hf-overrides", '{"is_causal": false}'], [], None,
                 {"model": "m", "engine.bidirectional": True}, id="hf-overrides-bidirectional"),
    pytest.param(["vllm", "serve", "m", "--dtype", "half", "--model", "ignored-positional-wins"], [], None,
                 {"model": "ignored-positional-wins", "dtype": "float16"}, id="model-flag-moves-to-front"),
]


@pytest.mark.parametrize("command,args,env,expected", CASES)
def test_reads_the_flags_that_decide_kernels(command, args, env, expected):
    serve = parse_serve(command, args, env)
    assert serve is not None
    model = expected.pop("model", None)
    assert serve.model == model
    assert dict(serve.settings) == expected
    for name in expected:
        assert serve.sources[name].startswith("args "), (name, serve.sources[name])


def test_a_bare_command_sets_nothing():
    serve = parse_serve(["vllm", "serve", "m"])
    assert serve.model == "m" and dict(serve.settings) == {}


def test_positional_model_is_ignored_by_the_api_server_module():
    serve = parse_serve(["python", "-m", "vllm.entrypoints.openai.api_server", "my-model", "-tp", "2"])
    assert serve.model is None and serve.settings["tensorParallelSize"] == 2
    assert any("positional" in n for n in serve.notes)


BAD = [
    (["vllm", "serve", "m", "--attention-backend", "FLASH_ATTENTION_9"], "--attention-backend", "FLASH_ATTN"),
    (["vllm", "serve", "m", "-tp", "two"], "--tensor-parallel-size", "integer"),
    (["vllm", "serve", "m", "-tp", "0"], "--tensor-parallel-size", ">= 1"),
    (["vllm", "serve", "m", "--kv-cache-dtype", "fp4"], "--kv-cache-dtype", "nvfp4"),
    (["vllm", "serve", "m", "--moe-backend", "cutlass_fused"], "--moe-backend", "flashinfer_cutlass"),
    (["vllm", "serve", "m", "--dtype", "bf16"], "--dtype", "bfloat16"),
    (["vllm", "serve", "m", "--attention-config", "{backend: x}"], "--attention-config", "JSON"),
    (["vllm", "serve", "m", "--max-num-batched-tokens"], "--max-num-batched-tokens", "needs a value"),
]


@pytest.mark.parametrize("command,flag,hint", BAD, ids=[b[1] + ":" + b[0][-1] for b in BAD])
def test_bad_values_name_the_flag_and_the_fix(command, flag, hint):
    with pytest.raises(EngineArgError) as err:
        parse_serve(command)
    assert err.value.field == flag
    assert hint in str(err.value)


def test_what_cannot_be_read_is_said():
    serve = parse_serve(["vllm", "serve", "m", "--config", "/etc/vllm/serve.yaml"],
                        env={"VLLM_ATTENTION_BACKEND": "TRITON_ATTN", "VLLM_USE_FLASHINFER_MOE_FP8": "1"})
    notes = " ".join(serve.notes)
    assert "/etc/vllm/serve.yaml" in notes and "not read" in notes
    assert "VLLM_ATTENTION_BACKEND" in notes and "--attention-backend" in notes
    assert "VLLM_USE_FLASHINFER_MOE_FP8" in notes
    assert dict(serve.settings) == {}  # the removed variables change nothing in vLLM 0.33


@pytest.mark.parametrize("command,args", [
    (["python", "app.py"], []),
    (["/bin/sh", "-c", "sleep infinity"], []),
    (["sglang", "serve", "m"], []),
])
def test_a_container_without_vllm_is_none(command, args):
    assert parse_serve(command, args) is None
    assert find_serve_args(command, args)[0] is None


def test_command_fills_what_the_kernelwarmup_leaves_unset_and_reports_conflicts():
    serve = parse_serve(["vllm", "serve", "m", "-tp", "4", "--dtype", "float16", "--attention-backend", "TRITON_ATTN"])
    spec = {"model": {"configPath": "/m/config.json"}, "tensorParallelSize": 2, "dtype": "auto"}
    merged, conflicts = merge_into_spec(spec, serve)
    assert merged["tensorParallelSize"] == 2  # the KernelWarmup's override wins ...
    assert merged["dtype"] == "float16" and merged["engine"]["attentionBackend"] == "TRITON_ATTN"
    assert [(c.path, c.kernelwarmup, c.command) for c in conflicts] == [("tensorParallelSize", 2, 4)]
    assert "args --tensor-parallel-size" in conflicts[0].message()  # ... and the Event names both
    assert spec["tensorParallelSize"] == 2 and "engine" not in spec  # the input is not mutated


def test_no_command_changes_nothing():
    spec = {"tensorParallelSize": 2}
    assert merge_into_spec(spec, None) == (spec, [])


def test_a_tp_that_does_not_split_the_heads_names_the_flag(tmp_path):
    """vLLM refuses -tp 3 for 32 heads; so does the plan, naming the config field and the flag."""
    import shlex
    from pathlib import Path

    from kernel_warmer.plan.model import ConfigError, load_arch
    from kernel_warmer.plan.triton import plan_triton
    from kernel_warmer.spec import WarmerSpec

    config = Path(__file__).resolve().parents[1] / "fixtures" / "configs" / "llama3-8b.json"
    merged, _ = merge_into_spec({"model": {"configPath": str(config)}},
                                parse_serve(shlex.split("vllm serve meta-llama/Llama-3.1-8B -tp 3")))
    spec = WarmerSpec.from_dict(merged)
    with pytest.raises(ConfigError) as err:
        plan_triton(load_arch(spec.model), spec.tensor_parallel_size, spec.dtype, spec.engine)
    assert err.value.field == "num_attention_heads"
    assert "-tp/--tensor-parallel-size" in str(err.value) and "tensor-parallel size 3" in str(err.value)
