"""replica.split: the serving operator gets admission only, the controller everything that writes."""

from __future__ import annotations

from typing import Any

import kopf

from warmup_operator.replica import split


def _fill(registry: kopf.OperatorRegistry, with_webhook: bool) -> None:
    kopf.on.startup(registry=registry)(lambda **_: None)
    kopf.index("apps", "v1", "deployments", registry=registry)(lambda **_: {})
    kopf.on.event("apps", "v1", "deployments", registry=registry)(lambda **_: None)
    kopf.on.create("kernelwarmup.dev", "v1alpha1", "kernelwarmups", registry=registry)(lambda **_: None)
    kopf.timer("kernelwarmup.dev", "v1alpha1", "kernelwarmups", interval=5, registry=registry)(lambda **_: None)
    if with_webhook:
        kopf.on.mutate("apps", "v1", "deployments", registry=registry)(lambda **_: None)


def _counts(r: Any) -> dict[str, int]:
    return {part: len(list(getattr(r, part).get_all_handlers()))
            for part in ("_activities", "_indexing", "_watching", "_spawning", "_changing", "_webhooks")}


def test_with_webhooks_every_replica_serves_them_with_the_indexes():
    registry = kopf.OperatorRegistry()
    _fill(registry, with_webhook=True)
    serving, controller = split(registry)
    assert _counts(serving) == {"_activities": 1, "_indexing": 1, "_watching": 0, "_spawning": 0, "_changing": 0,
                                "_webhooks": 1}
    # The controller writes; it serves no webhook (its last startup step switches admission off).
    assert _counts(controller) == {"_activities": 2, "_indexing": 1, "_watching": 1, "_spawning": 1, "_changing": 1,
                                   "_webhooks": 0}
    last = list(controller._activities.get_all_handlers())[-1]
    settings = kopf.OperatorSettings()
    settings.admission.server = object()
    settings.admission.managed = "name"
    last.fn(settings=settings)
    assert settings.admission.server is None and settings.admission.managed is None


def test_without_webhooks_a_standby_watches_nothing():
    registry = kopf.OperatorRegistry()
    _fill(registry, with_webhook=False)
    serving, _ = split(registry)
    assert _counts(serving)["_indexing"] == 0 and _counts(serving)["_activities"] == 1
