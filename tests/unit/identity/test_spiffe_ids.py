"""SPIFFE IDs: strict parsing by the spec, and weft's workload and node shapes."""

from __future__ import annotations

import pytest

from meshcore.identity.spiffe import IdentityError, SpiffeId, node_id, workload_id

GOOD = [
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://cluster.local/ns/default/sa/default", "cluster.local", "/ns/default/sa/default"),
    ("spiffe://a-b_c.9/x.y/Z_9-/..a/a..", "a-b_c.9", "/x.y/Z_9-/..a/a.."),
    ("spiffe://td/" + "a" * (2048 - len("spiffe://td/")), "td", "/" + "a" * 2036),
    ("spiffe://" + "t" * 255 + "/x", "t" * 255, "/x"),
]

BAD = [
    ("", "empty"),
    ("http://example.org/x", "scheme"),
    ("SPIFFE://example.org/x", "scheme"),
    ("spiffe:/example.org/x", "scheme"),
    ("example.org/x", "scheme"),
    ("spiffe://", "missing trust domain"),
    ("spiffe:///x", "missing trust domain"),
    ("spiffe://Example.org/x", "trust domain 'Example.org' may only hold"),
    ("spiffe://exa mple.org/x", "may only hold"),
    ("spiffe://exa%41mple.org/x", "may only hold"),
    ("spiffe://example.org:8080/x", "port"),
    ("spiffe://user@example.org/x", "userinfo"),
    ("spiffe://user:pw@example.org/x", "userinfo"),
    ("spiffe://example.org/x?y=1", "query"),
    ("spiffe://example.org/x#frag", "fragment"),
    ("spiffe://example.org?x", "query"),
    ("spiffe://example.org/", "empty segment"),
    ("spiffe://example.org//x", "empty segment"),
    ("spiffe://example.org/x/", "empty segment"),
    ("spiffe://example.org/./x", "'.' is not allowed"),
    ("spiffe://example.org/x/..", "'..' is not allowed"),
    ("spiffe://example.org/x%20y", "segment 'x%20y'"),
    ("spiffe://example.org/x y", "segment 'x y'"),
    ("spiffe://example.org/ü", "segment 'ü'"),
    ("spiffe://example.org/a:b", "segment 'a:b'"),
    ("spiffe://td/" + "a" * (2049 - len("spiffe://td/")), "longer than 2048 bytes"),
    ("spiffe://" + "t" * 256 + "/x", "longer than 255 bytes"),
]


@pytest.mark.parametrize(("uri", "trust_domain", "path"), GOOD)
def test_parse_accepts_valid_ids_and_prints_them_back(uri: str, trust_domain: str, path: str):
    parsed = SpiffeId.parse(uri)
    assert (parsed.trust_domain, parsed.path) == (trust_domain, path)
    assert str(parsed) == uri


@pytest.mark.parametrize(("uri", "reason"), BAD)
def test_parse_refuses_invalid_ids_saying_why(uri: str, reason: str):
    with pytest.raises(IdentityError) as err:
        SpiffeId.parse(uri)
    assert reason in err.value.reason
    assert err.value.value == uri
    assert isinstance(err.value, ValueError)


def test_constructor_checks_like_parse():
    with pytest.raises(IdentityError, match="may only hold"):
        SpiffeId("Example.org", "/x")
    with pytest.raises(IdentityError, match="must start with '/'"):
        SpiffeId("example.org", "x")


def test_ids_are_values():
    a = SpiffeId.parse("spiffe://cluster.local/ns/a/sa/b")
    assert a == workload_id("cluster.local", "a", "b")
    assert len({a, workload_id("cluster.local", "a", "b")}) == 1
    with pytest.raises(AttributeError):
        a.path = "/x"  # type: ignore[misc]


def test_workload_id_and_its_accessors():
    sid = workload_id("cluster.local", "shop", "checkout")
    assert str(sid) == "spiffe://cluster.local/ns/shop/sa/checkout"
    assert (sid.namespace, sid.service_account) == ("shop", "checkout")
    assert sid.node_name is None


def test_node_id_and_its_accessor():
    sid = node_id("cluster.local", "node-1.lab")
    assert str(sid) == "spiffe://cluster.local/weft/node/node-1.lab"
    assert sid.node_name == "node-1.lab"
    assert sid.namespace is None
    assert sid.service_account is None


@pytest.mark.parametrize(
    "path",
    ["", "/ns/a", "/ns/a/sa", "/ns/a/sa/b/c", "/ns/a/xx/b", "/xs/a/sa/b", "/weft/node/n"],
)
def test_workload_accessors_are_none_for_other_shapes(path: str):
    sid = SpiffeId("td", path)
    assert sid.namespace is None
    assert sid.service_account is None


@pytest.mark.parametrize(
    "path", ["", "/weft/node", "/weft/node/n/x", "/weft/nodes/n", "/x/node/n", "/ns/a/sa/b"]
)
def test_node_accessor_is_none_for_other_shapes(path: str):
    assert SpiffeId("td", path).node_name is None


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("cluster.local", "a/b", "sa"), "namespace: path segment 'a/b'"),
        (("cluster.local", "", "sa"), "namespace: path has an empty segment"),
        (("cluster.local", "ns", ".."), "service account: path segment '..' is not allowed"),
        (("Cluster.local", "ns", "sa"), "trust domain 'Cluster.local'"),
    ],
)
def test_workload_id_refuses_parts_that_are_not_one_segment(
    args: tuple[str, str, str], reason: str
):
    with pytest.raises(IdentityError) as err:
        workload_id(*args)
    assert reason in err.value.reason


def test_node_id_refuses_a_bad_node_name():
    with pytest.raises(IdentityError, match="node name"):
        node_id("cluster.local", "node/1")
