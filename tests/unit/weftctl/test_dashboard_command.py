"""`weftctl dashboard`'s address handling: loopback by default, anything else only with
--allow-remote; and the pure parts of its queries."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from weftctl.dashboard import promql
from weftctl.dashboard.command import Address, dashboard, parse_address
from weftctl.main import cli


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:15400", Address("127.0.0.1", 15400, True)),
        ("127.9.8.7:80", Address("127.9.8.7", 80, True)),
        ("localhost:8080", Address("127.0.0.1", 8080, True)),
        ("[::1]:15400", Address("::1", 15400, True)),
        ("0.0.0.0:15400", Address("0.0.0.0", 15400, False)),
        ("192.0.2.10:1", Address("192.0.2.10", 1, False)),
        ("[2001:db8::1]:443", Address("2001:db8::1", 443, False)),
    ],
)
def test_addresses(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("15400", "expected HOST:PORT"),
        (":15400", "expected HOST:PORT"),
        ("127.0.0.1:http", "port: not a number"),
        ("127.0.0.1:0", "port: must be 1..65535"),
        ("127.0.0.1:70000", "port: must be 1..65535"),
        ("example.com:80", "is not an IP address"),
    ],
)
def test_bad_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text)


def test_allowed_hosts_are_the_names_of_loopback_and_none_for_remote() -> None:
    assert parse_address("127.0.0.1:15400").allowed_hosts() == {
        "127.0.0.1:15400",
        "localhost:15400",
        "[::1]:15400",
    }
    assert parse_address("[::1]:9").allowed_hosts() == {"[::1]:9", "localhost:9", "127.0.0.1:9"}
    assert parse_address("0.0.0.0:9").allowed_hosts() == frozenset()


def test_a_non_loopback_address_needs_allow_remote_and_says_why() -> None:
    result = CliRunner().invoke(dashboard, ["--address", "0.0.0.0:15400"])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output
    assert "--allow-remote" in result.output


def test_a_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = CliRunner().invoke(
            dashboard, ["--address", f"127.0.0.1:{port}", "--lab", "weft-e-unit-nolab"]
        )
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_weftctl_has_the_command_and_its_help_warns_about_remote() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    assert "identity" in result.output and "--allow-remote" in result.output


@pytest.mark.parametrize("name", ["demo", "backend-v1", "a", "a" * 63])
def test_kubernetes_names_pass(name: str) -> None:
    assert promql.check_name("name", name) == name


@pytest.mark.parametrize("name", ["", "Demo", "-a", "a-", "a.b", 'a"', "a" * 64, "a b"])
def test_other_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(promql.QueryError, match=r"^namespace: not a Kubernetes name"):
        promql.check_name("namespace", name)


def test_parse_vector_reads_samples_and_counts_what_it_leaves() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"a": str(i)}, "value": [0, str(i)]} for i in range(5)],
        },
    }
    v = promql.parse_vector(body, "q", max_series=3)
    assert [s.labels["a"] for s in v.samples] == ["0", "1", "2"]
    assert v.dropped == 2
    assert promql.scalar(v) == 0.0
    assert promql.scalar(promql.Vector((), 0)) is None
    nan = promql.parse_vector(
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "NaN"]}]},
        },
        "q",
        10,
    )
    assert promql.scalar(nan) is None


def test_every_graph_query_groups_by_fixed_labels() -> None:
    for name, q in promql.graph_queries(promql.parse_window("5m")).items():
        assert q.startswith(("sum by (", "count by (")), name
        if name not in ("tcp_active", "waypoints"):
            assert "[5m]" in q, name
