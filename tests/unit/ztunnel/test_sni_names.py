"""SNI names for workload identities: one name per identity, and back, for every valid
namespace (a DNS label) and service account (a DNS subdomain: dots allowed)."""

from __future__ import annotations

import itertools
import ssl

import pytest

from ztunnel.pool import identity_from_sni, sni_for

TD = "cluster.local"


def wid(namespace: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{namespace}/sa/{sa}"


LONG_SA = ".".join(["a" * 63] * 3)  # 191 characters, valid, too long with a namespace
CASES = [
    (wid("shop", "web"), "web.shop.sa.weft"),
    (wid("a-b", "default"), "default.a-b.sa.weft"),
    (wid("sa", "web"), "web.sa.sa.weft"),  # the namespace `sa`
    (wid("ns", "sa"), "sa.ns.sa.weft"),
    (wid("sa", "sa"), "sa.sa.sa.weft"),
    (wid("weft", "sa.weft"), "sa.weft.weft.sa.weft"),
    (wid("shop", "web.v2"), "web.v2.shop.sa.weft"),  # a dotted service account
    (wid("web", "v2.shop"), "v2.shop.web.sa.weft"),  # ... not the same as this one
    (wid("shop", "a.b.c"), "a.b.c.shop.sa.weft"),
    (wid("0", "1"), "1.0.sa.weft"),
]


@pytest.mark.parametrize(("identity", "name"), CASES)
def test_an_identity_has_a_readable_name_that_maps_back_to_it(identity: str, name: str) -> None:
    assert sni_for(identity) == name
    assert identity_from_sni(name, TD) == identity


NAMESPACES = ["shop", "sa", "ns", "weft", "a-b", "x", "0", "n" * 63]
ACCOUNTS = ["web", "sa", "ns", "sa.weft", "web.v2", "v2.shop", "a.b.c", "default", "s" * 63]


def test_names_are_distinct_and_round_trip_for_every_pair() -> None:
    identities = [wid(n, s) for n, s in itertools.product(NAMESPACES, ACCOUNTS)]
    names = {sni_for(i): i for i in identities}
    assert len(names) == len(identities)
    for name, identity in names.items():
        assert identity_from_sni(name, TD) == identity


@pytest.mark.parametrize(
    "identity",
    [
        wid("shop", "a" * 64),  # a valid service account; a label too long for a host name
        wid("shop", LONG_SA + "." + "b" * 50),  # 242 characters: 255 with the rest
        wid("n" * 63, LONG_SA),
        wid("shop", "Web"),  # SPIFFE allows it, a Kubernetes name does not
        wid("shop", "web_1"),
    ],
)
def test_an_identity_too_long_for_a_host_name_gets_a_hashed_name_resolved_among_held_ones(
    identity: str,
) -> None:
    name = sni_for(identity)
    assert name.endswith(".id.weft") and len(name) <= 253
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)._encode_hostname(name)  # type: ignore[attr-defined]
    held = [wid("shop", "web"), identity, wid("other", "web")]
    assert identity_from_sni(name, TD, held) == identity
    assert identity_from_sni(name, TD, [wid("shop", "web")]) is None
    assert identity_from_sni(name, TD) is None


@pytest.mark.parametrize(("identity", "_name"), CASES)
def test_a_readable_name_is_a_valid_host_name(identity: str, _name: str) -> None:
    name = sni_for(identity)
    assert ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)._encode_hostname(name) == name  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "web.shop",
        "web.shop.sa.other",
        "sa.weft",
        "shop.sa.weft",  # no service account
        ".shop.sa.weft",
        "web..sa.weft",
        "-web.shop.sa.weft",
        "web.shop.sa.weft.",
        "example.com",
        "abc.id.weft",  # a hashed name of no held identity
    ],
)
def test_a_name_that_is_not_ours_maps_to_no_identity(name: str) -> None:
    assert identity_from_sni(name, TD) is None


def test_a_name_is_read_whatever_its_case() -> None:
    assert identity_from_sni("Web.Shop.SA.weft", TD) == wid("shop", "web")


@pytest.mark.parametrize(
    "identity",
    ["spiffe://cluster.local/weft/node/node-1", "spiffe://cluster.local/ns/shop", "web", ""],
)
def test_only_workload_identities_have_names(identity: str) -> None:
    with pytest.raises(ValueError):
        sni_for(identity)
