"""Named fault points for the reliability tests (stdlib only).

``KERNEL_WARMUP_FAULT=<stage>`` makes the process that reaches ``fault_point(<stage>)``
SIGKILL itself there: the tests use it to kill a warmer (or the operator) at an exact
stage and check that the next run repairs what was left. Nothing sets the variable in a
real deployment; unset, a fault point costs one environment lookup.

Stages: warmer ``locked`` (cache lock held, nothing written), ``worker-compiled`` (a
compile worker, after Triton wrote its entry), ``compiled`` (all variants compiled, no
manifest yet), ``atomic-write`` (temp file written and fsynced, not yet renamed),
``manifest-written`` (manifest in place, lock still held); operator ``applied`` (the
injection was applied, before its Event and status).
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "KERNEL_WARMUP_FAULT"


def fault_point(stage: str) -> None:
    if os.environ.get(FAULT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
