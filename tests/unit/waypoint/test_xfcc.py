"""The waypoint's `x-forwarded-client-cert` (waypoint/xfcc.py): Envoy's shape, set by the
waypoint from the verified client identity, and never taken from the client."""

from __future__ import annotations

import pytest

from waypoint.xfcc import HEADER, header_value, sanitize_set

WAYPOINT = "spiffe://cluster.local/ns/shop/sa/waypoint"
CLIENT = "spiffe://cluster.local/ns/shop/sa/client"


@pytest.mark.parametrize(
    ("by", "uri", "want"),
    [
        (WAYPOINT, CLIENT, f"By={WAYPOINT};URI={CLIENT}"),
        (WAYPOINT, "", f"By={WAYPOINT}"),
        # Envoy quotes a value holding a separator, escaping `"` and `\`
        (WAYPOINT, 'spiffe://td/a;b="c"', f'By={WAYPOINT};URI="spiffe://td/a;b=\\"c\\""'),
        (WAYPOINT, "spiffe://td/a,b\\", f'By={WAYPOINT};URI="spiffe://td/a,b\\\\"'),
    ],
)
def test_header_value_is_envoys_shape(by: str, uri: str, want: str) -> None:
    assert header_value(by, uri) == want


def test_the_waypoint_made_header_is_added() -> None:
    got = sanitize_set((("host", "web"), ("accept", "*/*")), WAYPOINT, CLIENT)
    assert got == (
        ("host", "web"),
        ("accept", "*/*"),
        (HEADER, f"By={WAYPOINT};URI={CLIENT}"),
    )


@pytest.mark.parametrize(
    "forged",
    [
        (
            (
                HEADER,
                "By=spiffe://cluster.local/ns/x/sa/y;URI=spiffe://cluster.local/ns/kube-system/sa/admin",
            ),
        ),
        ((HEADER, "a"), (HEADER, "b")),  # every copy goes
        (("X-Forwarded-Client-Cert", "URI=spiffe://evil"),),  # whatever the case
    ],
)
def test_a_client_sent_header_is_dropped(forged: tuple[tuple[str, str], ...]) -> None:
    got = sanitize_set((("host", "web"), *forged, ("accept", "*/*")), WAYPOINT, CLIENT)
    values = [v for n, v in got if n.lower() == HEADER]
    assert values == [f"By={WAYPOINT};URI={CLIENT}"]
    assert [n for n, _ in got] == ["host", "accept", HEADER]
