"""devcluster.wait_crd_established: an early error is retried, not fatal (CI once saw
`kubectl wait` exit 1 right after the CRD's apply on a fresh control plane), and a CRD
that never becomes Established is named with the last answer."""

from __future__ import annotations

import subprocess

import devcluster
import pytest


def answers(*replies):
    """A kubectl_run stand-in: each call returns the next (rc, stdout, stderr)."""
    calls = []

    def run(*args, check=True):
        calls.append(args)
        rc, out, err = replies[min(len(calls), len(replies)) - 1]
        return subprocess.CompletedProcess(args, rc, out, err)
    return run, calls


def test_not_found_then_established_returns():
    run, calls = answers((1, "", 'Error from server (NotFound): "kw" not found'), (0, "", ""), (0, "True", ""))
    devcluster.wait_crd_established(run, "kw.example.dev", timeout_s=10)
    assert len(calls) == 3 and calls[0][:2] == ("get", "crd/kw.example.dev")


def test_never_established_names_the_crd_and_the_last_answer():
    run, _ = answers((0, "False", ""))
    with pytest.raises(RuntimeError, match=r"CRD kw.example.dev not Established within 0s: Established is False"):
        devcluster.wait_crd_established(run, "kw.example.dev", timeout_s=0.3)
