"""Resilience at a namespace waypoint in the lab, as a user sees it, with the lab echo told to
fail on demand (`?codes=`, `?delay=`, `&pod=`): a route timeout is a 504 and the connection
goes on; retries go to the other endpoint and a non-idempotent request is not retried; a
DestinationRule's connection pool sheds what is over it at once (503, x-weft-overloaded)
rather than queueing; a mirror that is slow and failing never touches the client's answers.
Gateway API HTTPRoutes for the first two and the mirror, a DestinationRule for the pool."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab

pytestmark = pytest.mark.e2e

NS = "rese2e"


MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.service(NS, "echo", {"app": "echo"}),
    wl.service(NS, "pool", {"app": "echo"}),
    wl.client_pod(NS),
    wl.versioned_echo(NS, "echo", "v1", "node-2", ("POD_NAME",)),
    wl.versioned_echo(NS, "echo", "v2", "node-2", ("POD_NAME",)),
    wl.versioned_echo(NS, "shadow", "v1", "node-2", ("POD_NAME",)),
)

ROUTES = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    timeouts: {{request: 500ms}}
    backendRefs: [{{name: echo, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /mirrored}}}}]
    filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: shadow-v1, port: 80}}}}
    backendRefs: [{{name: echo, port: 80}}]
  - retry: {{codes: [503], attempts: 2}}
    backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: networking.weft.dev/v1
kind: DestinationRule
metadata: {{name: pool, namespace: {NS}}}
spec:
  host: pool
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 2}}
      http: {{http1MaxPendingRequests: 1}}
"""

# Run in the client pod: each (host, method, path) on its own connection, all at once from
# threads; prints [status, pod, x-weft-overloaded, seconds] for each, in order.
CLIENT = textwrap.dedent("""
    import http.client, json, sys, threading, time
    calls = json.loads(sys.argv[1])
    out = [None] * len(calls)
    def one(i, host, method, path):
        started = time.monotonic()
        conn = http.client.HTTPConnection(host, 80, timeout=10)
        conn.request(method, path, body=b"x" if method == "POST" else None)
        resp = conn.getresponse()
        body = resp.read()
        try:
            pod = json.loads(body).get("pod", "")
        except ValueError:
            pod = ""
        out[i] = [resp.status, pod, resp.getheader("x-weft-overloaded") or "",
                  round(time.monotonic() - started, 3)]
        conn.close()
    threads = [threading.Thread(target=one, args=(i, *c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))
""")

Result = tuple[int, str, str, float]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with wl.running_lab(f"weft-e2e-res-{RUN_ID}", MANIFESTS, tmp_path_factory.mktemp("res")) as lab:
        wl.apply_waypoint(lab, NS)
        wl.apply_yaml(lab, tmp_path_factory.mktemp("res") / "routes.yaml", ROUTES)
        yield lab


def _calls(lab: Lab, calls: list[tuple[str, str, str]]) -> list[Result]:
    out = wl.in_client(lab, NS, CLIENT, json.dumps(calls))
    return [(int(s), str(p), str(o), float(t)) for s, p, o, t in out]


def _until_routed(lab: Lab) -> None:
    """The route reaches the waypoint within seconds: /slow starts timing out."""
    ((status, *_),) = wl.poll_until(
        lambda: _calls(lab, [("echo", "GET", "/slow?delay=2s")]), lambda r: r[0][0] == 504, 30
    )
    if status != 504:
        raise AssertionError("the HTTPRoute's timeout never took effect")


def test_a_route_timeout_is_a_504_in_time(lab: Lab) -> None:
    _until_routed(lab)
    (slow,) = _calls(lab, [("echo", "GET", "/slow?delay=3s")])
    assert slow[0] == 504 and slow[3] < 2.0, slow
    (quick,) = _calls(lab, [("echo", "GET", "/slow")])
    assert quick[0] == 200, quick


def test_retries_go_to_the_other_endpoint_and_a_post_is_not_retried(lab: Lab) -> None:
    _until_routed(lab)
    (v2,) = lab.pods(NS, "echo-v2")
    (v1,) = lab.pods(NS, "echo-v1")
    failing = f"/any?codes=503&pod={v2['name']}"
    gets = _calls(lab, [("echo", "GET", failing)] * 10)
    assert {(s, p) for s, p, _, _ in gets} == {(200, v1["name"])}, gets
    posts = _calls(lab, [("echo", "POST", failing)] * 10)
    # round robin puts about half on v2: those are answered as v2 answered, not retried
    assert Counter(s for s, *_ in posts) == {200: 5, 503: 5}, posts


def test_over_the_connection_pool_is_shed_at_once_not_queued(lab: Lab) -> None:
    _until_routed(lab)
    results = _calls(lab, [("pool", "GET", "/pool?delay=1500ms")] * 8)
    shed = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    # 2 connections and 1 waiting: at most 3 served, the rest shed, fast
    assert 1 <= len(served) <= 3 and len(shed) >= 5, results
    assert all(o == "true" and t < 1.0 for _, _, o, t in shed), shed


def test_a_slow_failing_mirror_never_touches_the_clients_answer(lab: Lab) -> None:
    _until_routed(lab)
    (shadow,) = lab.pods(NS, "shadow-v1")
    calls = [("echo", "GET", f"/mirrored?delay=3s&codes=500&pod={shadow['name']}")] * 5
    results = _calls(lab, calls)
    assert all(s == 200 and t < 2.0 for s, _, _, t in results), results
