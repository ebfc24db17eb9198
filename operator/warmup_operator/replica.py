"""One operator replica under leader election (``--leader-elect``).

The handlers registered in handlers.py are split into two kopf operators in this process:

- **serving** (always, in every replica): admission webhooks (with the indexes they read),
  the startup settings and the liveness endpoint. Standby replicas answer admission
  requests and probes like the leader does.
- **controller** (only while this replica holds the Lease, leader.py): every watch,
  change, timer and index handler, i.e. everything that writes workloads, KernelWarmup
  status, finalizers and Events.

Losing the Lease (no renewal for the renew deadline) exits the process at once: the
kubelet restarts it as a standby, and no handler of a former leader can write after
another replica took over. SIGTERM stops the controller first, then releases the Lease so
a standby takes over after one retry period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any, Optional

import kopf

from warmup_operator.config import OperatorConfig
from warmup_operator.leader import Elector, identity

log = logging.getLogger("warmup_operator.replica")
LOST_EXIT_CODE = 3  # the Lease was lost: restart as a standby
CONTROLLER_STOP_S = 20.0  # a clean stop waits this long for the controller's handlers


class _SignalsAreOurs(logging.Filter):
    """kopf warns that it ignores OS signals off the main thread: here that is by design
    (``Replica.run`` handles SIGTERM and stops both operators in order)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "OS signals are ignored" not in record.getMessage()


def split(registry: Any) -> tuple[kopf.OperatorRegistry, kopf.OperatorRegistry]:
    """(serving, controller) registries from the one handlers.py filled."""
    serving, controller = kopf.OperatorRegistry(), kopf.OperatorRegistry()
    for h in registry._activities.get_all_handlers():
        serving._activities.append(h)
        controller._activities.append(h)
    webhooks = list(registry._webhooks.get_all_handlers())
    for h in webhooks:
        serving._webhooks.append(h)
    for h in registry._indexing.get_all_handlers():
        controller._indexing.append(h)
        if webhooks:  # admission handlers take the indexes as arguments
            serving._indexing.append(h)
    for part in ("_watching", "_spawning", "_changing"):
        for h in getattr(registry, part).get_all_handlers():
            getattr(controller, part).append(h)
    kopf.on.startup(registry=controller, id="controller_serves_no_admission")(_no_admission)
    return serving, controller


def _no_admission(settings: kopf.OperatorSettings, **_: Any) -> None:
    """The serving operator of this process owns the webhook port and its configuration."""
    settings.admission.server = None
    settings.admission.managed = None


class Replica:
    def __init__(self, cfg: OperatorConfig, registry: Any = None):
        from warmup_operator.kube import Kube, RetryPolicy

        self.cfg = cfg
        self.serving, self.controller = split(registry or kopf.get_default_registry())
        self.stopping = threading.Event()
        self.serving_stop, self.controller_stop = threading.Event(), threading.Event()
        self.controller_thread: Optional[threading.Thread] = None
        t = cfg.leader.timing
        # One try per request (the elector's loop is the retry) and short timeouts: a hung
        # renewal must not outlast the renew deadline.
        api = Kube(retry=RetryPolicy(attempts=1), timeout_s=(t.retry_s, t.retry_s))
        self.elector = Elector(api, cfg.leader.namespace, cfg.leader.lease_name, identity(cfg.leader.identity), t,
                               on_started=self._start_controller, on_lost=self._lost)

    def _operator(self, registry: kopf.OperatorRegistry, stop: threading.Event, liveness: Optional[str]) -> None:
        asyncio.run(kopf.operator(registry=registry, settings=kopf.OperatorSettings(), standalone=True,
                                  clusterwide=not self.cfg.namespaces, namespaces=list(self.cfg.namespaces),
                                  liveness_endpoint=liveness, stop_flag=stop))

    def _thread(self, name: str, registry: kopf.OperatorRegistry, stop: threading.Event,
                liveness: Optional[str]) -> threading.Thread:
        def body() -> None:
            try:
                self._operator(registry, stop, liveness)
            except Exception:
                log.exception("%s operator failed", name)
            if not self.stopping.is_set():  # it ended by itself: restart the whole replica
                log.error("%s operator ended unexpectedly: exiting", name)
                os._exit(1)
        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        return thread

    def _start_controller(self) -> None:
        log.info("leading: starting the controller handlers")
        self.controller_thread = self._thread("controller", self.controller, self.controller_stop, None)

    def _lost(self) -> None:
        logging.shutdown()
        os._exit(LOST_EXIT_CODE)

    def run(self) -> int:
        logging.getLogger("kopf._core.reactor.running").addFilter(_SignalsAreOurs())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        serving = self._thread("serving", self.serving, self.serving_stop, self.cfg.liveness or None)
        threading.Thread(target=self.elector.run, name="elector", daemon=True).start()
        self.stopping.wait()
        return self._shutdown(serving)

    def _shutdown(self, serving: threading.Thread) -> int:
        self.elector.stop()
        self.controller_stop.set()
        controller = self.controller_thread
        if controller is not None:
            controller.join(CONTROLLER_STOP_S)
        if controller is None or not controller.is_alive():
            self.elector.release()  # only once nothing of ours can write any more
        else:
            log.warning("controller handlers still running after %.0fs: the Lease expires on its own",
                        CONTROLLER_STOP_S)
        self.serving_stop.set()
        serving.join(10)
        return 0


def run_replica(cfg: OperatorConfig) -> int:
    return Replica(cfg).run()
