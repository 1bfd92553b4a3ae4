"""meshcore.accessevents: TapFilter semantics and query parsing, the hub's bounds."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from prometheus_client import REGISTRY

from meshcore.accessevents import (
    FIELDS,
    AccessEvent,
    TapFilter,
    TapHub,
    TooManySubscribers,
    event_line,
)

CLIENT = "spiffe://cluster.local/ns/demo/sa/client"
SERVER = "spiffe://cluster.local/ns/shop/sa/web"


def event(**changes: object) -> AccessEvent:
    base = AccessEvent(
        time=1.0,
        component="ztunnel",
        reporter="destination",
        kind="connection",
        node="node-2",
        source_workload="client-0",
        source_namespace="demo",
        source_principal=CLIENT,
        source_address="10.1.1.5:40000",
        destination_workload="web-1",
        destination_namespace="shop",
        destination_principal=SERVER,
        destination_service="web.shop.svc.cluster.local",
        destination_address="10.1.2.7:8080",
        verdict="allow",
        policy="",
        reason="",
        security="mutual_tls",
        bytes_sent=10,
        bytes_received=20,
        duration_ms=1.5,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flt", "matched"),
    [
        (TapFilter(), True),
        (TapFilter(namespace="demo"), True),  # source side
        (TapFilter(namespace="shop"), True),  # destination side
        (TapFilter(namespace="other"), False),
        (TapFilter(pod="client-0"), True),
        (TapFilter(pod="web-1"), True),
        (TapFilter(pod="web"), False),  # names match whole
        (TapFilter(identity=CLIENT), True),
        (TapFilter(identity=SERVER), True),
        (TapFilter(identity="ns/shop/sa/web"), True),  # any trust domain
        (TapFilter(identity="shop/web"), True),
        (TapFilter(identity="shop/we"), False),
        (TapFilter(identity="spiffe://other.domain/ns/shop/sa/web"), False),
        (TapFilter(port=8080), True),
        (TapFilter(port=40000), False),  # the destination's port, not the client's
        (TapFilter(verdict="allow"), True),
        (TapFilter(verdict="deny"), False),
        (TapFilter(namespace="demo", port=8080, verdict="allow"), True),  # all must match
        (TapFilter(namespace="demo", port=9090), False),
    ],
)
def test_filter_matches_either_side_and_every_set_field(flt: TapFilter, matched: bool) -> None:
    assert flt.matches(event()) is matched


def test_identity_filter_never_matches_an_unknown_principal() -> None:
    plaintext = event(source_principal="", destination_principal="")
    assert not TapFilter(identity="ns/demo/sa/client").matches(plaintext)
    assert TapFilter(namespace="demo").matches(plaintext)


def test_filter_query_round_trips() -> None:
    flt = TapFilter("demo", "web-1", "ns/shop/sa/web", 8080, "deny")
    assert TapFilter.from_query(flt.to_query()) == flt
    assert TapFilter().to_query() == {}
    assert TapFilter.from_query({}) == TapFilter()


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"ns": "demo"}, "unknown parameter 'ns' (known: namespace, pod, identity, port, verdict)"),
        ({"port": "http"}, "port: 'http' is not a port"),
        ({"port": "70000"}, "port: '70000' is not a port"),
        ({"verdict": "maybe"}, "verdict: 'maybe' is not one of allow, deny, error"),
        ({"pod": "a b"}, "pod: 'a b' is not a name"),
        ({"namespace": "x" * 600}, "namespace: "),
    ],
)
def test_bad_query_names_the_parameter(query: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError) as err:
        TapFilter.from_query(query)
    assert str(err.value).startswith(error)


def test_event_json_is_flat_with_the_contract_names() -> None:
    data = event(response_code=403, method="GET").to_json()
    assert tuple(data) == FIELDS
    assert data["response_code"] == 403 and data["destination_principal"] == SERVER
    line = event_line(event())
    assert line["type"] == "event" and line["bytes_sent"] == 10
    assert event().destination_port == 8080
    assert event(destination_address="").destination_port == 0


def _metric(name: str, component: str) -> float:
    return REGISTRY.get_sample_value(name, {"component": component}) or 0.0


def test_hub_is_inactive_until_someone_listens_and_after_they_leave() -> None:
    async def main() -> None:
        hub = TapHub("ztunnel-unit-a")
        assert not hub.active
        hub.publish(event())  # nobody: nothing happens
        sub = hub.subscribe(TapFilter())
        assert hub.active and hub.subscribers == 1
        assert _metric("weft_tap_subscribers", "ztunnel-unit-a") == 1
        hub.unsubscribe(sub)
        assert not hub.active and hub.subscribers == 0
        assert _metric("weft_tap_subscribers", "ztunnel-unit-a") == 0
        got: list[AccessEvent] = []
        hub.add_sink(got.append)  # an exporter listens for good
        hub.publish(event())
        assert hub.active and len(got) == 1

    asyncio.run(main())


def test_subscriber_gets_only_what_its_filter_passes() -> None:
    async def main() -> tuple[list[AccessEvent], int]:
        hub = TapHub("ztunnel-unit-b")
        sub = hub.subscribe(TapFilter(verdict="deny"))
        hub.publish(event())
        hub.publish(event(verdict="deny", policy="shop/deny-all"))
        return await sub.take(1.0)

    events, dropped = asyncio.run(main())
    assert [e.policy for e in events] == ["shop/deny-all"] and dropped == 0


def test_nothing_to_take_times_out_empty() -> None:
    async def main() -> tuple[list[AccessEvent], int]:
        hub = TapHub("ztunnel-unit-c")
        return await hub.subscribe(TapFilter()).take(0.05)

    assert asyncio.run(main()) == ([], 0)


def test_a_full_queue_drops_newer_events_and_counts_them() -> None:
    async def main() -> None:
        hub = TapHub("ztunnel-unit-d", queue_events=4)
        slow = hub.subscribe(TapFilter())
        fast = hub.subscribe(TapFilter())
        before = _metric("weft_tap_events_dropped_total", "ztunnel-unit-d")
        for i in range(4):
            hub.publish(event(bytes_sent=i))
        assert await fast.take(1.0) == ([event(bytes_sent=i) for i in range(4)], 0)
        for i in range(4, 10):  # past the slow one's bound by 6
            hub.publish(event(bytes_sent=i))
        events, dropped = await slow.take(1.0)
        assert [e.bytes_sent for e in events] == [0, 1, 2, 3] and dropped == 6
        events, dropped = await fast.take(1.0)  # its own bound: it lost only 2
        assert [e.bytes_sent for e in events] == [4, 5, 6, 7] and dropped == 2
        assert _metric("weft_tap_events_dropped_total", "ztunnel-unit-d") - before == 8
        assert await slow.take(0.01) == ([], 0)  # the count was handed over once

    asyncio.run(main())


def test_the_seventeenth_subscriber_is_refused_and_counted() -> None:
    async def main() -> None:
        hub = TapHub("ztunnel-unit-e")
        subs = [hub.subscribe(TapFilter()) for _ in range(16)]
        with pytest.raises(TooManySubscribers, match="already serves 16 taps"):
            hub.subscribe(TapFilter())
        assert _metric("weft_tap_subscribers_refused_total", "ztunnel-unit-e") == 1
        hub.unsubscribe(subs[0])
        hub.subscribe(TapFilter())  # room again
        hub.close()
        assert hub.subscribers == 0 and all(s.closed for s in subs)

    asyncio.run(main())
