"""The API retry policy with a fake transport at the ApiClient boundary (reliability): 409/429/5xx and
dropped connections are retried with capped, jittered backoff; 422/404/400/403 are not."""

from __future__ import annotations

import pytest

from warmup_operator.kube import Kube, RetryPolicy, is_retryable

pytestmark = pytest.mark.reliability


class FakeResp:
    def __init__(self, status, body=b"{}", headers=None):
        self.status, self.reason, self._body, self.headers = status, {200: "OK", 409: "Conflict", 422: "Unprocessable",
                                                                        429: "Too Many Requests", 500: "Internal",
                                                                        503: "Unavailable"}.get(status, "?"), body, headers or {}

    def read(self):
        return self._body


class FakeClient:
    """Stands in for kubernetes.client.ApiClient: answers from a script."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def param_serialize(self, method, path, query_params, header_params, auth_settings):
        return method, path, header_params, None, None

    def call_api(self, method, url, header_params, body, _request_timeout):
        self.calls.append((method, url))
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def kube_with(script, **policy):
    sleeps = []
    k = Kube(FakeClient(script), retry=RetryPolicy(**policy), sleep=sleeps.append)
    return k, sleeps


def test_5xx_is_retried_with_growing_delays_then_succeeds():
    k, sleeps = kube_with([FakeResp(503), FakeResp(500), FakeResp(200, b'{"ok": 1}')], jitter=0)
    assert k._call("GET", "/x") == {"ok": 1}
    assert len(k.client.calls) == 3 and sleeps == [0.2, 0.4]


def test_409_conflict_is_retried():
    k, sleeps = kube_with([FakeResp(409, b'{"reason":"Conflict"}'), FakeResp(200)], jitter=0)
    assert k._call("PATCH", "/x", body={}) == {}
    assert len(sleeps) == 1


def test_422_and_404_are_not_retried():
    import kubernetes
    for status in (422, 404, 400, 403):
        k, sleeps = kube_with([FakeResp(status, b'{"message":"bad"}'), FakeResp(200)])
        with pytest.raises(kubernetes.client.exceptions.ApiException) as ei:
            k._call("PATCH", "/x", body={})
        assert ei.value.status == status and len(k.client.calls) == 1 and sleeps == []


def test_429_honours_retry_after_capped():
    k, sleeps = kube_with([FakeResp(429, headers={"Retry-After": "2"}), FakeResp(429, headers={"Retry-After": "3600"}),
                           FakeResp(200)], cap_s=5.0)
    k._call("GET", "/x")
    assert sleeps == [2.0, 5.0]


def test_dropped_connection_is_retried():
    import urllib3
    k, sleeps = kube_with([urllib3.exceptions.ProtocolError("Connection aborted"), ConnectionResetError(),
                           FakeResp(200)], jitter=0)
    assert k._call("GET", "/x") == {}
    assert len(sleeps) == 2


def test_persistent_5xx_gives_up_after_the_attempts_and_total_stays_bounded():
    import kubernetes
    k, sleeps = kube_with([FakeResp(503)] * 10, attempts=5)
    with pytest.raises(kubernetes.client.exceptions.ApiException) as ei:
        k._call("GET", "/x")
    assert ei.value.status == 503 and len(k.client.calls) == 5 and len(sleeps) == 4
    assert sum(sleeps) <= 0.2 + 0.4 + 0.8 + 1.6


def test_delays_are_jittered_within_bounds_and_capped():
    p = RetryPolicy(base_s=1.0, cap_s=4.0, jitter=0.5)
    for attempt in range(8):
        lo, hi = p.delay(attempt, rand=lambda: 1.0), p.delay(attempt, rand=lambda: 0.0)
        assert hi == min(4.0, 2.0 ** attempt) and lo == hi / 2


def test_retryable_classification():
    class E(Exception):
        def __init__(self, status):
            self.status = status
    assert [is_retryable(E(s)) for s in (409, 429, 500, 502, 503, 504)] == [True] * 6
    assert [is_retryable(E(s)) for s in (400, 401, 403, 404, 410, 422)] == [False] * 6
    assert is_retryable(ConnectionRefusedError()) and not is_retryable(KeyError("x"))

