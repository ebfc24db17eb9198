"""Injection is a pure function of (KernelWarmup spec, pod template): tested by table."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from support.ssa import apply_fragment

from kernel_warmer.spec import SPEC_ENV, WarmerSpec
from warmup_operator.core import names
from warmup_operator.core.containers import InjectionError
from warmup_operator.core.inject import build_injection
from warmup_operator.core.kernelwarmup import SpecInvalid, parse_spec
from warmup_operator.core.uninject import removal_fragment, user_view


def spec(**over):
    base = {"targets": {"selector": {"matchLabels": {"app": "vllm"}}}, "model": {"configPath": "/models/m/config.json"}}
    base.update(over)
    return parse_spec(base)


def container(name="vllm", gpus=1, env=None, mounts=None, image="vllm/vllm-openai:v0.11.0", **extra):
    c = {"name": name, "image": image, "args": ["--model", "/models/m"]}
    if gpus:
        c["resources"] = {"limits": {"nvidia.com/gpu": gpus, "memory": "64Gi"}, "requests": {"cpu": "8"}}
    if env is not None:
        c["env"] = env
    if mounts is not None:
        c["volumeMounts"] = mounts
    c.update(extra)
    return c


def template(*containers, init=None, volumes=None, annotations=None):
    t = {"metadata": {"labels": {"app": "vllm"}}, "spec": {"containers": list(containers)}}
    if init:
        t["spec"]["initContainers"] = init
    if volumes:
        t["spec"]["volumes"] = volumes
    if annotations:
        t["metadata"]["annotations"] = annotations
    return t


USER_INIT = {"name": "download-model", "image": "busybox", "command": ["true"]}
MODEL_VOL = {"name": "models", "persistentVolumeClaim": {"claimName": "models"}}
MODEL_MOUNT = {"name": "models", "mountPath": "/models", "readOnly": True}


def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env") or []}


def by_name(items, name):
    return next(i for i in items if i["name"] == name)


def inject_into(t, s=None, cr="kw"):
    inj = build_injection(s or spec(), user_view(t), cr_name=cr)
    return inj, apply_fragment(t, inj.fragment)


CASES = [
    # id, template, spec overrides, expectations on the serving container's env
    ("plain", template(container(mounts=[MODEL_MOUNT]), volumes=[MODEL_VOL]), {}, {"PYTHONPATH": names.PKG_SITE_DIR}),
    ("user-pythonpath", template(container(env=[{"name": "PYTHONPATH", "value": "/app"}])), {},
     {"PYTHONPATH": f"{names.PKG_SITE_DIR}:/app"}),
    ("no-sitecustomize", template(container()), {"sitecustomize": False}, {"PYTHONPATH": None}),
    ("user-init-kept", template(container(), init=[USER_INIT]), {}, {"PYTHONPATH": names.PKG_SITE_DIR}),
    ("named-serving", template(container("proxy", gpus=0), container("engine", gpus=8)), {"servingContainer": "engine"},
     {"PYTHONPATH": names.PKG_SITE_DIR}),
    ("hostpath-cache", template(container()), {"cache": {"mountPath": "/cache", "hostPath": {"path": "/var/kw"}}},
     {"TRITON_CACHE_DIR": "/cache/triton"}),
]


@pytest.mark.parametrize("case_id,tmpl,over,want_env", CASES, ids=[c[0] for c in CASES])
def test_injection_table(case_id, tmpl, over, want_env):
    s = spec(**over)
    original = copy.deepcopy(tmpl)
    inj, out = inject_into(tmpl, s)
    assert tmpl == original, "the input template must not be mutated"
    serving = by_name(out["spec"]["containers"], inj.serving_container)
    env = env_of(serving)
    for k, v in want_env.items():
        assert env.get(k) == v, (k, env)
    mount = s.cache.mount_path
    # every cache the server writes is on the volume (Triton, FlashInfer's tactics, JIT and
    # DeepGEMM kernels, vLLM's cache root, Inductor, CUDA's PTX cache)
    assert {k: env[k] for k in names.SERVING_ENV} == {
        "TRITON_CACHE_DIR": f"{mount}/triton", "KERNEL_WARMUP_FLASHINFER_DIR": f"{mount}/flashinfer",
        "FLASHINFER_WORKSPACE_BASE": f"{mount}/flashinfer-jit", "TRTLLM_DG_CACHE_DIR": f"{mount}/flashinfer-jit/deepgemm",
        "VLLM_CACHE_ROOT": f"{mount}/vllm", "TORCHINDUCTOR_CACHE_DIR": f"{mount}/inductor", "CUDA_CACHE_PATH": f"{mount}/cuda"}
    # the warmer learns the cache from its spec alone (one door); the spec carries the
    # serving container's own start for the engine phase, never the CR author's
    warmer = by_name(out["spec"]["initContainers"], names.WARMER_CONTAINER)
    warmer_env = env_of(warmer)
    assert not set(names.SERVING_ENV) & set(warmer_env)
    wspec = json.loads(warmer_env[SPEC_ENV])
    assert wspec["cacheDir"] == mount
    assert wspec["server"] == {"warmup": s.engine_warmup, "command": serving.get("command") or [],
                               "args": serving.get("args") or [], **({"pythonpath": env["PYTHONPATH"]}
                                                                      if "PYTHONPATH" in env else {})}
    # Init containers: the user's first (kept as they were), ours last, in order.
    inits = out["spec"]["initContainers"]
    assert [c["name"] for c in inits][-2:] == list(names.INIT_CONTAINERS)
    for c in tmpl["spec"].get("initContainers") or []:
        assert by_name(inits, c["name"]) == c
    warmer = by_name(inits, names.WARMER_CONTAINER)
    # Exec form, nothing through a shell; the warmer reads its spec from the env.
    assert warmer["command"] == ["python3", "-m", "kernel_warmer", "run", "--spec-env", SPEC_ENV]
    assert "args" not in warmer
    wenv = env_of(warmer)
    assert dataclasses.replace(WarmerSpec.from_json(wenv[SPEC_ENV]), server=s.warmer.server) == s.warmer
    assert wenv["PYTHONPATH"].split(":")[0] == names.PKG_PYTHON_DIR
    assert warmer["image"] == (serving["image"])
    # Same GPUs, same cache path in warmer and server.
    assert warmer["resources"]["limits"].get("nvidia.com/gpu") == serving["resources"]["limits"]["nvidia.com/gpu"]
    cache_w = [m for m in warmer["volumeMounts"] if m["name"] == names.CACHE_VOLUME]
    cache_s = [m for m in serving["volumeMounts"] if m["name"] == names.CACHE_VOLUME]
    assert cache_w[0]["mountPath"] == cache_s[0]["mountPath"] == mount
    # The user's volumes and mounts survive, and the warmer sees the model mount too.
    for v in tmpl["spec"].get("volumes") or []:
        assert by_name(out["spec"]["volumes"], v["name"]) == v
    user_serving = by_name(tmpl["spec"]["containers"], inj.serving_container)
    for m in user_serving.get("volumeMounts") or []:
        assert m in serving["volumeMounts"] and m in warmer["volumeMounts"]
    assert out["metadata"]["annotations"][names.ANN_HASH] == inj.hash
    # Other containers untouched.
    for c in tmpl["spec"]["containers"]:
        if c["name"] != inj.serving_container:
            assert by_name(out["spec"]["containers"], c["name"]) == c


@pytest.mark.parametrize("case_id,tmpl,over,_", CASES, ids=[c[0] for c in CASES])
def test_user_view_of_injected_is_the_original(case_id, tmpl, over, _):
    inj, out = inject_into(tmpl, spec(**over))
    assert user_view(out) == user_view(tmpl)
    # Fixpoint: re-injecting the injected template changes nothing (no rollout loop).
    again = build_injection(spec(**over), user_view(out), cr_name="kw")
    assert again.hash == inj.hash and apply_fragment(out, again.fragment) == out


def test_removal_restores_user_pythonpath_value():
    t = template(container(env=[{"name": "PYTHONPATH", "value": "/app"}]))
    _, out = inject_into(t)
    frag = removal_fragment(out)
    assert frag == {"spec": {"containers": [{"name": "vllm", "env": [{"name": "PYTHONPATH", "value": "/app"}]}]}}
    assert removal_fragment(inject_into(template(container()))[1]) == {}


def test_hash_changes_with_spec_and_with_serving_image_only_when_relevant():
    t = template(container())
    h1 = build_injection(spec(), t, cr_name="kw").hash
    assert build_injection(spec(), copy.deepcopy(t), cr_name="kw").hash == h1
    assert build_injection(spec(tensorParallelSize=2), t, cr_name="kw").hash != h1
    assert build_injection(spec(), template(container(image="vllm/vllm-openai:v0.12.0")), cr_name="kw").hash != h1
    assert build_injection(spec(), t, cr_name="other").hash != h1
    t2 = copy.deepcopy(t)
    t2["spec"]["containers"][0]["args"] = ["--model", "/models/other"]
    # the args reach the warmer now: its engine phase starts the serving command as it is
    assert build_injection(spec(), t2, cr_name="kw").hash != h1
    assert build_injection(spec(engineWarmup="never"), t, cr_name="kw").hash != h1


def test_warmer_resources_override_keeps_gpus():
    s = spec(warmer={"resources": {"limits": {"memory": "16Gi"}}})
    inj = build_injection(s, template(container(gpus=4)), cr_name="kw")
    warmer = inj.fragment["spec"]["initContainers"][1]
    assert warmer["resources"]["limits"] == {"nvidia.com/gpu": 4, "memory": "16Gi"}
    with pytest.raises(SpecInvalid):  # a GPU count of the CR's own is refused (issue 25): they follow the server
        spec(warmer={"resources": {"limits": {"nvidia.com/gpu": 0}}})


def test_warmer_image_override_and_python():
    s = spec(warmer={"image": "registry.local/warmer:1", "python": "/usr/bin/python3.12", "imagePullPolicy": "Always"})
    warmer = build_injection(s, template(container()), cr_name="kw").fragment["spec"]["initContainers"][1]
    assert warmer["image"] == "registry.local/warmer:1" and warmer["imagePullPolicy"] == "Always"
    assert warmer["command"][0] == "/usr/bin/python3.12"


def test_valuefrom_pythonpath_is_left_alone_with_a_warning():
    env = [{"name": "PYTHONPATH", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "pp"}}}]
    inj = build_injection(spec(), template(container(env=env)), cr_name="kw")
    serving_env = inj.fragment["spec"]["containers"][0]["env"]
    assert "PYTHONPATH" not in [e["name"] for e in serving_env]
    assert inj.warnings and "valueFrom" in inj.warnings[0]


ERRORS = [
    ("no-gpu", template(container(gpus=0)), {}, "spec.servingContainer", "no container requests GPUs"),
    ("two-gpu", template(container("a"), container("b")), {}, "spec.servingContainer", "several containers"),
    ("missing-name", template(container()), {"servingContainer": "nope"}, "spec.servingContainer", "no container named 'nope'"),
    ("mount-collision", template(container(mounts=[{"name": "x", "mountPath": "/kernel-warmup-cache"}])), {},
     "spec.cache.mountPath", "collides"),
    ("mount-inside-the-models", template(container(mounts=[{"name": "m", "mountPath": "/models//m/"}])),
     {"cache": {"mountPath": "/models/m/cache"}}, "spec.cache.mountPath", "inside volumeMount 'm'"),
    ("mount-over-the-models", template(container(mounts=[{"name": "m", "mountPath": "/data/models"}])),
     {"cache": {"mountPath": "/data"}}, "spec.cache.mountPath", "over volumeMount 'm'"),
    ("user-triton-dir", template(container(env=[{"name": "TRITON_CACHE_DIR", "value": "/tmp/t"}])), {},
     "containers[vllm].env[TRITON_CACHE_DIR]", "set by the operator"),
]


@pytest.mark.parametrize("case_id,tmpl,over,field,text", ERRORS, ids=[e[0] for e in ERRORS])
def test_injection_errors_name_the_field(case_id, tmpl, over, field, text):
    with pytest.raises(InjectionError) as err:
        build_injection(spec(**over), user_view(tmpl), cr_name="kw")
    assert err.value.field == field and text in err.value.message


def test_fragment_contains_only_operator_entries():
    t = template(container(env=[{"name": "A", "value": "1"}], mounts=[MODEL_MOUNT]), init=[USER_INIT], volumes=[MODEL_VOL])
    frag = build_injection(spec(), t, cr_name="kw").fragment
    assert [c["name"] for c in frag["spec"]["initContainers"]] == list(names.INIT_CONTAINERS)
    assert [v["name"] for v in frag["spec"]["volumes"]] == list(names.VOLUMES)
    (serving,) = frag["spec"]["containers"]
    assert set(serving) == {"name", "env", "volumeMounts"}
    assert "A" not in [e["name"] for e in serving["env"]]
    assert {m["name"] for m in serving["volumeMounts"]} == set(names.VOLUMES)
    json.dumps(frag)  # serialisable as the apply body
