"""Each named step of ``build_injection``, by table (the complete cases are the golden ones)."""

from __future__ import annotations

import pytest

from kernel_warmer.spec import SPEC_ENV
from warmup_operator.core import inject, names
from warmup_operator.core.containers import InjectionError
from warmup_operator.core.kernelwarmup import parse_spec

SITE, PKG = names.PKG_SITE_DIR, names.PKG_PYTHON_DIR
PP_FROM = {"name": "PYTHONPATH", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "pp"}}}


def spec(**over):
    return parse_spec({"targets": {"names": ["w"]}, "model": {"configPath": "/m/config.json"}, **over})


def serving(**over):
    return {"name": "vllm", "image": "vllm:1", **over}


@pytest.mark.parametrize("template, container, mount, field", [
    ({}, serving(), "/cache", None),
    ({"spec": {"volumes": [{"name": names.CACHE_VOLUME}]}}, serving(), "/cache", "spec.cache"),
    ({"spec": {"initContainers": [{"name": names.WARMER_CONTAINER}]}}, serving(), "/cache", "spec"),
    ({}, serving(volumeMounts=[{"name": "m", "mountPath": "/cache/"}]), "/cache", "spec.cache.mountPath"),
    ({}, serving(volumeMounts=[{"name": "m", "mountPath": "/kernel-warmup/x"}]), "/cache",
     "containers[vllm].volumeMounts"),
    ({}, serving(env=[{"name": "TRITON_CACHE_DIR", "value": "/t"}]), "/cache",
     "containers[vllm].env[TRITON_CACHE_DIR]"),
    ({}, serving(env=[{"name": "VLLM_CACHE_ROOT", "value": "/v"}]), "/cache", "containers[vllm].env[VLLM_CACHE_ROOT]"),
    ({"spec": {"volumes": [{"name": "models"}], "initContainers": [{"name": "dl"}]}}, serving(), "/cache", None),
], ids=["clean", "volume", "init-container", "cache-mount", "pkg-mount", "serving-env", "vllm-cache-env",
        "user-objects"])
def test_check_reserved(template, container, mount, field):
    if field is None:
        inject.check_reserved(template, container, mount)
    else:
        with pytest.raises(InjectionError) as e:
            inject.check_reserved(template, container, mount)
        assert e.value.field == field


def test_cache_env():
    assert inject.cache_env("/c") == [
        {"name": "TRITON_CACHE_DIR", "value": "/c/triton"},
        {"name": "KERNEL_WARMUP_FLASHINFER_DIR", "value": "/c/flashinfer"},
        {"name": "FLASHINFER_WORKSPACE_BASE", "value": "/c/flashinfer-jit"},
        {"name": "TRTLLM_DG_CACHE_DIR", "value": "/c/flashinfer-jit/deepgemm"},
        {"name": "VLLM_CACHE_ROOT", "value": "/c/vllm"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/c/inductor"},
        {"name": "CUDA_CACHE_PATH", "value": "/c/cuda"},
    ]


@pytest.mark.parametrize("env, want", [
    (None, None), ([{"name": "PYTHONPATH", "value": "/app"}], "/app"), ([{"name": "PYTHONPATH", "value": ""}], ""),
    ([{"name": "PYTHONPATH"}], None), ([PP_FROM], None), ([{"name": "OTHER", "value": "/x"}], None),
])
def test_literal_pythonpath(env, want):
    assert inject.literal_pythonpath(serving(env=env) if env else serving()) == want


@pytest.mark.parametrize("env, site, want_pp, warns", [
    (None, True, SITE, False),
    ([{"name": "PYTHONPATH", "value": "/app"}], True, f"{SITE}:/app", False),
    ([{"name": "PYTHONPATH", "value": ""}], True, SITE, False),
    ([PP_FROM], True, None, True),
    ([{"name": "PYTHONPATH", "value": "/app"}], False, None, False),
])
def test_serving_env(env, site, want_pp, warns):
    cache = inject.cache_env("/c")
    out, warnings = inject.serving_env(serving(env=env) if env else serving(), cache, site)
    assert out[:len(cache)] == cache
    assert {e["name"]: e["value"] for e in out}.get("PYTHONPATH") == want_pp
    assert bool(warnings) == warns


@pytest.mark.parametrize("env, want_pp, kept", [
    (None, PKG, []),
    ([{"name": "PYTHONPATH", "value": "/app"}, {"name": "HF_HOME", "value": "/hf"}], f"{PKG}:/app", ["HF_HOME"]),
    ([PP_FROM, {"name": SPEC_ENV, "value": "user's"}], PKG, []),
])
def test_warmer_env(env, want_pp, kept):
    out = inject.warmer_env(serving(env=env) if env else serving(), '{"s": 1}')
    names_ = [e["name"] for e in out]
    assert names_ == [*kept, "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", SPEC_ENV]
    values = {e["name"]: e.get("value") for e in out}
    assert values["PYTHONPATH"] == want_pp and values[SPEC_ENV] == '{"s": 1}'


@pytest.mark.parametrize("warmer, container, image, pull", [
    ({}, serving(), "vllm:1", None),
    ({}, serving(imagePullPolicy="Always"), "vllm:1", "Always"),
    ({"image": "own:2"}, serving(imagePullPolicy="Always"), "own:2", None),
    ({"image": "own:2", "imagePullPolicy": "Never"}, serving(), "own:2", "Never"),
], ids=["serving-image", "serving-pull", "own-image", "own-pull"])
def test_warmer_container_image_and_pull_policy(warmer, container, image, pull):
    w = inject.warmer_container(spec(warmer=warmer), container, [])
    assert (w["image"], w.get("imagePullPolicy")) == (image, pull)


def test_warmer_container_takes_mounts_sources_and_gpus():
    container = serving(volumeMounts=[{"name": "models", "mountPath": "/models"}], workingDir="/app",
                        envFrom=[{"secretRef": {"name": "s"}}], resources={"limits": {"nvidia.com/gpu": 2}})
    w = inject.warmer_container(spec(), container, [{"name": "A", "value": "1"}])
    assert [m["mountPath"] for m in w["volumeMounts"]] == ["/models", "/kernel-warmup-cache", names.PKG_MOUNT]
    assert w["workingDir"] == "/app" and w["envFrom"] == container["envFrom"] and w["env"] == [{"name": "A", "value": "1"}]
    assert w["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert w["command"] == ["python3", "-m", "kernel_warmer", "run", "--spec-env", SPEC_ENV]


def test_bootstrap_container():
    b = inject.bootstrap_container("img:1")
    assert b["image"] == "img:1" and b["command"] == inject.BOOTSTRAP_COMMAND
    assert b["volumeMounts"] == [{"name": names.PKG_VOLUME, "mountPath": names.PKG_MOUNT}]
    assert b["securityContext"]["runAsNonRoot"] and b["securityContext"]["readOnlyRootFilesystem"]


@pytest.mark.parametrize("source", [{"emptyDir": {}}, {"hostPath": {"path": "/kw"}},
                                    {"persistentVolumeClaim": {"claimName": "c"}}])
def test_pod_volumes(source):
    assert inject.pod_volumes(source) == [{"name": names.PKG_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
                                          {"name": names.CACHE_VOLUME, **source}]


def test_serving_patch():
    assert inject.serving_patch("vllm", [{"name": "A", "value": "1"}], "/c") == {
        "name": "vllm", "env": [{"name": "A", "value": "1"}],
        "volumeMounts": [{"name": names.CACHE_VOLUME, "mountPath": "/c"},
                         {"name": names.PKG_VOLUME, "mountPath": names.PKG_MOUNT, "readOnly": True}]}


@pytest.mark.parametrize("body, cr", [({"spec": {}}, "a"), ({"spec": {}}, "b"), ({"spec": {"x": 1}}, "a")])
def test_annotate_hashes_body_and_owner(body, cr):
    fragment, h = inject.annotate(body, cr)
    assert fragment["metadata"]["annotations"] == {names.ANN_HASH: h, names.ANN_INJECTED_BY: cr}
    assert fragment["spec"] == body["spec"] and h == inject.digest({"cr": cr, "body": body})
    assert len({inject.annotate(b, c)[1] for b, c in [({"spec": {}}, "a"), ({"spec": {}}, "b"), ({"spec": {"x": 1}}, "a")]}) == 3
