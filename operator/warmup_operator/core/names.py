"""Names the operator reserves in users' objects, in one place.

Everything the operator adds to a pod template carries one of these names, which is how
it recognises (and removes) exactly its own entries and nothing of the user's.
"""

from __future__ import annotations

import re

from kernel_warmer.cache.volume import CacheLayout

GROUP = "kernelwarmup.dev"
VERSION = "v1alpha1"
PLURAL = "kernelwarmups"
KIND = "KernelWarmup"

FIELD_MANAGER = "kernel-warmup-operator"
FINALIZER = f"{GROUP}/finalizer"

# Pod-template annotations (they reach the Pods, which is how Pods are tied to a CR).
ANN_HASH = f"{GROUP}/injection-hash"
ANN_INJECTED_BY = f"{GROUP}/injected-by"
# Workload label (not the template's, and not an annotation: a Deployment's generation moves
# with its annotations, never with its labels): a digest of what the injection was built
# from (core/decide.py's inputs_digest), so an operator upgrade whose injection differs keeps
# a workload's live injection until the workload or its CR changes.
LABEL_INPUTS = f"{GROUP}/injected-from"

BOOTSTRAP_CONTAINER = "kernel-warmup-bootstrap"
WARMER_CONTAINER = "kernel-warmup-warmer"
PKG_VOLUME = "kernel-warmup-pkg"
CACHE_VOLUME = "kernel-warmup-cache"
INIT_CONTAINERS = (BOOTSTRAP_CONTAINER, WARMER_CONTAINER)
VOLUMES = (PKG_VOLUME, CACHE_VOLUME)

# The bootstrap copies the warmer package and the serving sitecustomize here.
PKG_MOUNT = "/kernel-warmup"
PKG_PYTHON_DIR = f"{PKG_MOUNT}/python"  # holds kernel_warmer/ (the warmer's PYTHONPATH)
PKG_SITE_DIR = f"{PKG_MOUNT}/site"  # holds sitecustomize.py (the server's PYTHONPATH)

ENV_PYTHONPATH = "PYTHONPATH"
# Env the operator sets on the serving container (CacheLayout.SERVER_ENV, the one table of
# the cache's folders); a user value for these would be lost, so a workload setting one is refused.
SERVING_ENV = tuple(name for name, _ in CacheLayout.SERVER_ENV)
# Env an earlier version set there and this one no longer does: still the operator's in a
# live template (taken out on removal, owned on adoption, refused from users).
RETIRED_SERVING_ENV = ("KERNEL_WARMUP_CACHE_DIR",)
OWN_ENV = (*SERVING_ENV, *RETIRED_SERVING_ENV)
ENV_FLASHINFER_DIR = CacheLayout.FLASHINFER_DIR_ENV  # the sitecustomize reads it

# A Python interpreter's file name (python, python3, python3.12): what an install-time
# interpreter entry or a serving command's first word must be to be taken as one.
PYTHON_NAME_RE = re.compile(r"^python[0-9.]*$")

DEFAULT_BOOTSTRAP_IMAGE = "ghcr.io/kernel-warmup/kernel-warmup:0.1.0"

# Prewarm Jobs (core/prewarm.py): labels to find a target's Jobs, annotations to read them.
LABEL_PREWARM_CR = f"{GROUP}/prewarm-for"  # the KernelWarmup's name
LABEL_PREWARM_TARGET = f"{GROUP}/prewarm-target"  # a digest of "<kind>/<workload>" (label values are short)
LABEL_PREWARM_HASH = f"{GROUP}/prewarm-hash"  # the injection hash the Job warms for
ANN_PREWARM_TARGET = f"{GROUP}/prewarm-target"  # "<kind>/<workload>", readable
ANN_PREWARM_NODE = f"{GROUP}/prewarm-node"  # hostPath: the node whose folder the Job fills
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"  # set on a Job's Pods by the Job controller
