"""The CLI as the operator and users call it: plan JSON, errors that name the field, spec
input, termination message, failure policy, and a `check` that never imports torch/triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.sites import FORK_SERVE, FORK_SITE

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"


def warmer(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kernel_warmer", *args], capture_output=True, text=True,
                          env=e, check=check, timeout=300)


def test_plan_json_shape():
    out = warmer("plan", "--model-config", str(CONFIGS / "gemma2-9b.json"), "-tp", "2", "--json",
                 "--serve-command", FORK_SERVE, check=True)
    doc = json.loads(out.stdout)
    assert [v["sliding_window"] for v in doc["triton_variants"]] == [[4095, 0], [-1, -1]]
    for v in doc["triton_variants"]:
        assert set(v) == {"site", "num_heads", "num_kv_heads", "head_size", "scale", "softcap", "sliding_window",
                          "is_causal", "sinks", "dtype"}
    assert doc["skipped_layers"] == []
    assert "autotune_ops" in doc and "skipped_ops" in doc


def test_plan_skipped_layers_in_json():
    doc = json.loads(warmer("plan", "--model-config", str(CONFIGS / "gpt-oss-20b.json"), "--json",
                            check=True).stdout)
    assert doc["triton_variants"] == [] and doc["skipped_layers"][0] == {"layer": 0, "reason": "sinks"}


def test_plan_error_names_the_field_and_exits_2():
    out = warmer("plan", "--model-config", str(CONFIGS / "llama3-8b.json"), "-tp", "3", "--json")
    assert out.returncode == 2
    assert "'num_attention_heads'" in out.stderr and "tensor-parallel size 3" in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_missing_file_and_bad_json(tmp_path):
    out = warmer("plan", "--model-config", str(tmp_path / "nope.json"))
    assert out.returncode == 2 and "cannot read" in out.stderr
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    out = warmer("plan", "--model-config", str(tmp_path))
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_plan_requires_exactly_one_source():
    out = warmer("plan")
    assert out.returncode == 2 and "exactly one of --model-config" in out.stderr


def test_plan_file_json_and_yaml(tmp_path):
    layers = [{"numHeads": 8, "numKvHeads": 2, "headSize": 64, "count": 4, "slidingWindow": 128},
              {"numHeads": 8, "numKvHeads": 2, "headSize": 64, "sinks": True}]
    (tmp_path / "p.json").write_text(json.dumps({"layers": layers, "hiddenSize": 512}))
    doc = json.loads(warmer("plan", "--plan", str(tmp_path / "p.json"), "--json", *FORK_SITE[:2],
                            check=True).stdout)
    assert [v["sliding_window"] for v in doc["triton_variants"]] == [[127, 0]]
    assert doc["skipped_layers"] == [{"layer": 4, "reason": "sinks"}]
    yaml = pytest.importorskip("yaml")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(layers))
    doc2 = json.loads(warmer("plan", "--plan", str(tmp_path / "p.yaml"), "--json", *FORK_SITE[:2],
                             check=True).stdout)
    assert doc2["triton_variants"] == doc["triton_variants"]
    (tmp_path / "bad.json").write_text(json.dumps({"layers": [{"numHeads": 8, "headSize": 64}]}))
    out = warmer("plan", "--plan", str(tmp_path / "bad.json"))
    assert out.returncode == 2 and "plan.layers[0].numKvHeads" in out.stderr


def test_spec_env_is_how_the_operator_starts_it(tmp_path):
    spec = {"model": {"configPath": str(CONFIGS / "mistral-7b-v0.1.json")}, "tensorParallelSize": 4,
            "cacheDir": str(tmp_path), "engine": {"attentionBackend": "TRITON_ATTN", "kvCacheDtype": "nvfp4"}}
    out = warmer("plan", "--spec-env", "KERNEL_WARMER_SPEC", "--json", env={"KERNEL_WARMER_SPEC": json.dumps(spec)},
                 check=True)
    (v,) = json.loads(out.stdout)["triton_variants"]
    assert (v["num_heads"], v["num_kv_heads"], v["sliding_window"]) == (8, 2, [4095, 0])
    out = warmer("plan", "--spec-env", "KERNEL_WARMER_SPEC", env={"KERNEL_WARMER_SPEC": '{"model": {}}'})
    assert out.returncode == 2 and "configPath" in out.stderr


def test_run_failure_writes_summary_and_policy_decides_exit(tmp_path):
    log = tmp_path / "termination-log"
    args = ["run", "--model-config", str(CONFIGS / "llama3-8b.json"), "-tp", "3", "--cache-dir",
            str(tmp_path / "c"), "--termination-log", str(log), "--target", "sm_90"]
    out = warmer(*args)
    assert out.returncode == 1
    summary = json.loads(out.stdout)
    assert summary["status"] == "failed" and "num_attention_heads" in summary["error"]
    assert json.loads(log.read_text())["status"] == "failed"
    out = warmer(*args, "--failure-policy", "ignore")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "failed"


def test_termination_log_skipped_when_folder_absent(tmp_path):
    out = warmer("run", "--model-config", str(CONFIGS / "gpt-oss-20b.json"), "--cache-dir", str(tmp_path / "c"),
                 "--termination-log", str(tmp_path / "no" / "such" / "log"), "--target", "sm_90", "--no-flashinfer")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["status"] == "ok" and s["triton"]["skipped"] == 24 and s["triton"]["compiled"] == 0


def test_compile_only_needs_target():
    out = warmer("check", "--model-config", str(CONFIGS / "llama3-8b.json"), "--compile-only")
    assert out.returncode == 2 and "--target" in out.stderr
    # run still reports through a summary (the operator reads it)
    out = warmer("run", "--model-config", str(CONFIGS / "llama3-8b.json"), "--compile-only",
                 "--termination-log", "/nonexistent/log")
    assert out.returncode == 2 and "--target" in json.loads(out.stdout)["error"]  # a usage error, like check


CHECK_NO_HEAVY = """
import sys, time
t = time.monotonic()
from kernel_warmer.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "triton", "numpy", "flashinfer", "vllm") if m in sys.modules)
print("RESULT", rc, heavy, round(time.monotonic() - t, 3))
"""


def test_check_is_cold_fast_and_imports_no_torch_or_triton(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHECK_NO_HEAVY, "check", "--model-config",
                          str(CONFIGS / "gemma2-9b.json"), "--cache-dir", str(tmp_path), "--target", "sm_90"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer")),
                         timeout=60)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][0]
    _, rc, rest = line.split(" ", 2)
    assert rc == "1" and rest.startswith("[]"), out.stdout + out.stderr
    assert float(rest.rsplit(" ", 1)[1]) < 1.0


def test_run_keeps_stdout_for_the_summary_alone():
    """Libraries and workers write to fd 1 (FlashInfer prints cuDNN handle lines there,
    seen on an H200): during the work fd 1 points at stderr, so stdout is one JSON doc."""
    code = (
        "import os, sys\n"
        "from kernel_warmer.cli import _stdout_to_stderr\n"
        "with _stdout_to_stderr():\n"
        "    os.write(1, b'noise from a C library\\n'); print('noise from python')\n"
        "    import subprocess; subprocess.run(['echo', 'noise from a child'])\n"
        "print('{\"status\": \"ok\"}')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "initcontainer"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == {"status": "ok"}
    assert "noise from a C library" in out.stderr and "noise from a child" in out.stderr
    assert "noise from python" in out.stderr


def test_plan_from_the_serving_command(tmp_path):
    """--serve-command sets what vLLM's command line sets; explicit flags override it."""
    out = warmer("plan", "--model-config", str(CONFIGS / "gemma2-9b.json"), "--json", "--serve-command",
                 "vllm serve google/gemma-2-9b -tp 4 --attention-backend TRITON_ATTN --kv-cache-dtype nvfp4",
                 check=True)
    doc = json.loads(out.stdout)
    assert doc["tensor_parallel_size"] == 4 and {v["num_heads"] for v in doc["triton_variants"]} == {4}
    out = warmer("plan", "--model-config", str(CONFIGS / "gemma2-9b.json"), "--json", "-tp", "2",
                 "--serve-command", "vllm serve g -tp 4 --attention-backend TRITON_ATTN --kv-cache-dtype nvfp4",
                 check=True)
    assert json.loads(out.stdout)["tensor_parallel_size"] == 2
    out = warmer("plan", "--model-config", str(CONFIGS / "llama3-8b.json"), "--json", "--serve-command",
                 "vllm serve m", check=True)
    doc = json.loads(out.stdout)
    assert doc["triton_variants"] == [] and "FLASH_ATTN" in doc["unreached"][0]
    out = warmer("plan", "--model-config", str(CONFIGS / "llama3-8b.json"), "--serve-command",
                 "vllm serve m --attention-backend FLASH_ATTENTION")
    assert out.returncode == 2 and "--attention-backend" in out.stderr and "FLASH_ATTN" in out.stderr
    out = warmer("plan", "--model-config", str(CONFIGS / "llama3-8b.json"), "--serve-command", "python app.py")
    assert out.returncode == 2 and "does not run `vllm serve`" in out.stderr


def test_timeout_seconds_flag_sets_the_deadline_and_names_the_field():
    from kernel_warmer.cli import build_parser, spec_from_args
    from kernel_warmer.spec import SpecError

    base = ["run", "--model-config", str(CONFIGS / "qwen3-30b-a3b.json")]
    assert spec_from_args(build_parser().parse_args([*base, "--timeout-seconds", "5400"])).timeout_seconds == 5400
    assert spec_from_args(build_parser().parse_args(base)).timeout_seconds == 1800
    with pytest.raises(SpecError, match="timeoutSeconds"):
        spec_from_args(build_parser().parse_args([*base, "--timeout-seconds", "0"]))


def test_tuning_flag_picks_sharded_or_rank0_and_rejects_anything_else(capsys):
    from kernel_warmer.cli import build_parser, spec_from_args
    from kernel_warmer.spec import WarmerSpec

    base = ["run", "--model-config", str(CONFIGS / "qwen3-30b-a3b.json")]
    assert spec_from_args(build_parser().parse_args(base)).flashinfer.tuning == "sharded"
    spec = spec_from_args(build_parser().parse_args([*base, "--tuning", "rank0"]))
    assert spec.flashinfer.tuning == "rank0"
    assert WarmerSpec.from_json(spec.to_json()).flashinfer.tuning == "rank0"  # the contract carries it
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--tuning", "every"])
    assert "--tuning" in capsys.readouterr().err


def test_a_spec_with_an_unknown_tuning_mode_names_the_field():
    from kernel_warmer.spec import SpecError, WarmerSpec

    with pytest.raises(SpecError, match="flashinfer.tuning.*sharded, rank0"):
        WarmerSpec.from_dict({"model": {"configPath": "/m/config.json"}, "flashinfer": {"tuning": "all"}})
