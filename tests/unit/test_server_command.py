"""The engine phase's command: the serving command byte for byte but for ``--load-format
dummy`` and a free ``--port`` (kernel_warmer/server/command.py)."""

from __future__ import annotations

import pytest

from kernel_warmer.server.command import CLI_MODULE, ServeCommandError, key_doc, serve_argv, vllm_env, without

PY = "/usr/bin/python3"


@pytest.mark.parametrize("command,args,tokens", [
    # vllm/vllm-openai: ENTRYPOINT `vllm serve`, the Pod gives args only
    ([], ["meta-llama/Llama-3.1-8B", "-tp", "2", "--max-model-len", "8192"],
     ["meta-llama/Llama-3.1-8B", "-tp", "2", "--max-model-len", "8192"]),
    (["vllm", "serve", "m", "--dtype=bfloat16"], [], ["m", "--dtype=bfloat16"]),
    (["/usr/local/bin/vllm"], ["serve", "m", "--enforce-eager"], ["m", "--enforce-eager"]),
    (["sh", "-c", "pip list >/dev/null; vllm serve m --port 9000 --hf-overrides '{\"a\": 1}'"], [],
     ["m", "--port", "9000", "--hf-overrides", '{"a": 1}']),
    (["python3", "-m", "vllm.entrypoints.cli.main", "serve", "m"], [], ["m"]),
])
def test_every_token_is_kept_in_order_and_two_are_set(command, args, tokens):
    s = serve_argv(command, args)
    assert s.module == CLI_MODULE and list(s.tokens) == tokens
    argv = s.argv(PY, 41234)
    kept = [t for t in tokens if t not in ("--port", "9000")]
    assert argv == [PY, "-m", CLI_MODULE, "serve", *kept, "--load-format", "dummy", "--port", "41234"]


def test_the_api_server_module_runs_as_it_is_named():
    s = serve_argv(["python3", "-m", "vllm.entrypoints.openai.api_server"], ["--model", "m", "--port", "8000"])
    assert s.argv(PY, 5) == [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", "m", "--load-format", "dummy",
                             "--port", "5"]


@pytest.mark.parametrize("tokens,expected", [
    (["m", "--load-format", "safetensors", "-tp", "2"], ["m", "-tp", "2"]),
    (["m", "--load-format=runai_streamer"], ["m"]),
    (["m", "--load_format", "pt", "--port=1"], ["m", "--port=1"]),
    (["m", "--load-format"], ["m"]),  # a flag without its value (vLLM would refuse it anyway)
])
def test_any_spelling_of_the_load_format_is_replaced(tokens, expected):
    assert without(tokens, "--load-format") == expected
    assert serve_argv([], tokens).key_tokens() == expected


def test_no_vllm_no_command():
    with pytest.raises(ServeCommandError, match="no vLLM server to start"):
        serve_argv(["python", "app.py"], [])


def test_the_key_holds_vllms_env_but_not_our_paths():
    s = serve_argv([], ["m", "--port", "8000"])
    doc = key_doc(s, {"VLLM_USE_V2_MODEL_RUNNER": "1", "VLLM_CACHE_ROOT": "/c/vllm", "HF_TOKEN": "x"}, "0.26.0")
    assert doc == {"vllm": "0.26.0", "module": CLI_MODULE, "tokens": ["m", "--port", "8000"],
                   "env": {"VLLM_USE_V2_MODEL_RUNNER": "1"}}
    assert vllm_env({"B": "1", "VLLM_X": "2"}) == {"VLLM_X": "2"}
