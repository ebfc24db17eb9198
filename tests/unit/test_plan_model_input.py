"""Hostile and malformed input to the warmer: config.json, plan files, spec files.

Each case must end in a ConfigError/SpecError/usage error naming the field (or the file),
never in a traceback, a hang or a memory blow-up. Cases already covered elsewhere (missing
heads/head_dim, kv not dividing heads, layer_types length, bad JSON, missing file) are in
test_plan_triton.py / test_cli.py and not repeated here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_warmer.cli import main as cli_main
from kernel_warmer.plan.model import MAX_CONFIG_BYTES, ConfigError, load_arch
from kernel_warmer.plan.triton import plan_triton
from kernel_warmer.spec import SpecError, WarmerSpec

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]


def cfg(**over):
    c = {"model_type": "llama", "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
         "num_hidden_layers": 32, "intermediate_size": 14336, "torch_dtype": "bfloat16"}
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


# (id, config overrides, field named in the error, text in the message)
BAD_CONFIGS = [
    ("zero-heads", {"num_attention_heads": 0}, "num_attention_heads", ">= 1"),
    ("negative-heads", {"num_attention_heads": -8}, "num_attention_heads", ">= 1"),
    ("negative-kv", {"num_key_value_heads": -1}, "num_key_value_heads", ">= 1"),
    ("zero-layers", {"num_hidden_layers": 0}, "num_hidden_layers", ">= 1"),
    ("heads-as-string", {"num_attention_heads": "32"}, "num_attention_heads", "'32'"),
    ("heads-as-float", {"num_attention_heads": 32.0}, "num_attention_heads", "integer"),
    ("heads-as-bool", {"num_attention_heads": True}, "num_attention_heads", "integer"),
    ("heads-as-list", {"num_attention_heads": [32]}, "num_attention_heads", "integer"),
    ("huge-heads", {"num_attention_heads": 10 ** 30, "num_key_value_heads": None}, "num_attention_heads", "implausibly large"),
    ("huge-layers", {"num_hidden_layers": 10 ** 12}, "num_hidden_layers", "implausibly large"),
    ("huge-head-dim", {"head_dim": 1 << 40}, "head_dim", "implausibly large"),
    ("huge-hidden", {"hidden_size": 10 ** 18}, "hidden_size", "implausibly large"),
    ("derived-head-dim-huge", {"hidden_size": 1 << 23, "num_attention_heads": 1, "num_key_value_heads": 1},
     "head_dim", "implausibly large"),
    ("hidden-not-multiple-of-heads", {"hidden_size": 4100}, "head_dim", "not divisible by num_attention_heads"),
    ("huge-window", {"sliding_window": 1 << 40}, "sliding_window", "1.."),
    ("window-as-string", {"sliding_window": "4096"}, "sliding_window", "'4096'"),
    ("nan-qpas", {"query_pre_attn_scalar": float("nan")}, "query_pre_attn_scalar", "finite"),
    ("inf-softcap", {"attn_logit_softcapping": float("inf")}, "attn_logit_softcapping", "finite"),
    ("negative-softcap", {"attn_logit_softcapping": -1.0}, "attn_logit_softcapping", ">= 0"),
    ("bad-dtype", {"torch_dtype": "int4"}, "torch_dtype", "unsupported dtype"),
    ("dtype-as-number", {"torch_dtype": 16}, "torch_dtype", "unsupported dtype"),
    ("moe-topk-missing", {"num_local_experts": 8}, "num_experts_per_tok", "is missing"),
    ("moe-shared-wrong-type", {"num_local_experts": 8, "num_experts_per_tok": 2, "shared_expert_intermediate_size": "big"},
     "shared_expert_intermediate_size", "integer"),
    ("moe-shared-experts-wrong-type", {"num_local_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": "two"},
     "n_shared_experts", "integer"),
    ("text-config-nested-error", {"text_config": {"num_attention_heads": -1, "num_hidden_layers": 2}},
     "text_config.num_attention_heads", ">= 1"),
]


@pytest.mark.parametrize("case_id,over,field,text", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_values_name_the_field(case_id, over, field, text):
    with pytest.raises(ConfigError) as ei:
        arch = load_arch(cfg(**over))
        plan_triton(arch, 1, None)  # a value the parser let through must not crash the planner
    assert ei.value.field == field, str(ei.value)
    assert text in str(ei.value), str(ei.value)


def test_non_object_and_empty_configs(tmp_path):
    for i, body in enumerate([b"[]", b"42", b'"config"', b"null", b""]):
        p = tmp_path / f"c{i}.json"
        p.write_bytes(body)
        with pytest.raises(ConfigError) as ei:
            load_arch(str(p))
        assert ei.value.field == "<config.json>" and str(p) in str(ei.value)


def test_non_utf8_config_is_named_not_a_unicode_traceback(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(b'{"model_type": "ll\xff\xfeama"}')
    with pytest.raises(ConfigError) as ei:
        load_arch(str(p))
    assert "not UTF-8" in str(ei.value) and "byte 18" in str(ei.value)


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(cfg()).encode())
    assert load_arch(str(p)).num_hidden_layers == 32


def test_100mb_config_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "config.json"
    with open(p, "wb") as f:  # sparse: 100 MB on paper, nothing on disk
        f.truncate(100 << 20)
    start = time.monotonic()
    with pytest.raises(ConfigError) as ei:
        load_arch(str(p))
    assert time.monotonic() - start < 1.0
    assert "104857600 bytes" in str(ei.value) and "limit" in str(ei.value)


def test_endless_stream_is_cut_at_the_limit():
    """/dev/zero reports size 0: reading stops one byte past the limit, then refuses."""
    with pytest.raises(ConfigError) as ei:
        load_arch("/dev/zero")
    assert "over the" in str(ei.value) and f"{MAX_CONFIG_BYTES >> 10} KiB" in str(ei.value)


def test_hostile_nesting_is_an_error_not_a_recursion_crash(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ConfigError) as ei:
        load_arch(str(p))
    assert "nests too deeply" in str(ei.value)


def test_config_path_is_a_folder_without_config(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_arch(str(tmp_path))
    assert "cannot read" in str(ei.value) and "config.json" in str(ei.value)


# --- plan files (explicit layers) --------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str]:
    """In-process CLI; returns (exit code, stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main(list(argv))
    return rc, err.getvalue()


BAD_PLANS = [
    ("count-huge", [{"numHeads": 8, "numKvHeads": 8, "headSize": 64, "count": 10 ** 12}], "layers[0].count", "implausibly large"),
    ("layers-add-up", [{"numHeads": 8, "numKvHeads": 8, "headSize": 64, "count": 40000}] * 2, "layers[1].count", "add up"),
    ("head-size-huge", [{"numHeads": 8, "numKvHeads": 8, "headSize": 1 << 20}], "layers[0].headSize", "implausibly large"),
    ("heads-negative", [{"numHeads": -8, "numKvHeads": 8, "headSize": 64}], "layers[0].numHeads", ">= 1"),
    ("heads-string", [{"numHeads": "8", "numKvHeads": 8, "headSize": 64}], "plan.layers[0].numHeads", "integer"),
    ("unknown-key", [{"numHeads": 8, "numKvHeads": 8, "headSize": 64, "rm -rf": 1}], "plan.layers[0]", "unknown field"),
    ("layers-not-list", {"layers": "all"}, "plan.layers", "must be a list"),
    ("window-huge", [{"numHeads": 8, "numKvHeads": 8, "headSize": 64, "slidingWindow": 1 << 40}],
     "layers[0].slidingWindow", "1.."),
    ("scale-nan", [{"numHeads": 8, "numKvHeads": 8, "headSize": 64, "scale": float("nan")}], "layers[0].scale", "finite"),
]


@pytest.mark.parametrize("case_id,doc,field,text", BAD_PLANS, ids=[c[0] for c in BAD_PLANS])
def test_hostile_plan_files_exit_2_naming_the_field(tmp_path, case_id, doc, field, text):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(doc))
    start = time.monotonic()
    rc, err = run_cli("plan", "--plan", str(p))
    assert rc == 2, err
    assert field in err and text in err, err
    assert "Traceback" not in err
    assert time.monotonic() - start < 5


def test_plan_file_size_limit_and_non_utf8(tmp_path):
    big = tmp_path / "plan.json"
    with open(big, "wb") as f:
        f.truncate(50 << 20)
    rc, err = run_cli("plan", "--plan", str(big))
    assert rc == 2 and "--plan" in err and "limit" in err, err
    bad = tmp_path / "plan.yaml"
    bad.write_bytes(b"layers:\n  - numHeads: 8\xff\n")
    rc, err = run_cli("plan", "--plan", str(bad))
    assert rc == 2 and "not UTF-8" in err, err


def test_hostile_yaml_plans(tmp_path):
    pytest.importorskip("yaml")
    cases = {
        # an arbitrary-object tag: safe_load refuses it (nothing is constructed or run)
        "python-tag.yaml": "layers: !!python/object/apply:os.system ['touch PWNED']\n",
        "deep.yaml": "[" * 5000 + "]" * 5000 + "\n",
        "broken.yaml": "layers: [\n  {numHeads: 8\n",
    }
    for name, text in cases.items():
        p = tmp_path / name
        p.write_text(text)
        rc, err = run_cli("plan", "--plan", str(p))
        assert rc == 2, (name, err)
        assert "Traceback" not in err, (name, err)
    assert not (Path.cwd() / "PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_spec_file_and_env_hostile(tmp_path, monkeypatch):
    deep = tmp_path / "spec.json"
    deep.write_text("{\"a\":" * 100_000 + "1" + "}" * 100_000)
    rc, err = run_cli("check", "--spec", str(deep))
    assert rc == 2 and "nests too deeply" in err, err
    monkeypatch.setenv("HOSTILE_SPEC", json.dumps({"model": {"configPath": "/m/config.json"}, "tensorParallelSize": "2"}))
    rc, err = run_cli("check", "--spec-env", "HOSTILE_SPEC")
    assert rc == 2 and "tensorParallelSize" in err, err
    with pytest.raises(SpecError) as ei:
        WarmerSpec.from_json("[" * 100_000)
    assert ei.value.field == "<spec>"


def test_run_with_hostile_config_writes_a_failed_summary_naming_the_field(tmp_path):
    """The injected init container's path: `run` still writes the summary the operator
    reads, and failurePolicy decides the exit code."""
    c = tmp_path / "config.json"
    c.write_text(json.dumps(cfg(num_attention_heads=-4)))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
    for policy, want in (("fail", 1), ("ignore", 0)):
        term = tmp_path / f"term-{policy}"
        out = subprocess.run([sys.executable, "-m", "kernel_warmer", "run", "--model-config", str(c),
                              "--cache-dir", str(tmp_path / "cache"), "--no-flashinfer", "--target", "sm_90",
                              "--failure-policy", policy, "--termination-log", str(term)],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == want, out.stderr
        summary = json.loads(out.stdout)
        assert summary["status"] == "failed" and "num_attention_heads" in summary["error"]
        assert json.loads(term.read_text())["status"] == "failed"
        assert "Traceback" not in out.stderr
