"""meshcore.adminserver: listener addresses, and each listener serving only its own routes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from meshcore import adminserver
from meshcore.adminserver import Address, AddressError, parse_addr


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("127.0.0.1:15000", Address("127.0.0.1", 15000)),
        ("0.0.0.0:15020", Address("0.0.0.0", 15020)),
        ("[::1]:15000", Address("::1", 15000)),
        ("[::]:15021", Address("::", 15021)),
        ("", None),  # off
        ("127.0.0.1:0", None),  # off
    ],
)
def test_parse_addr(value: str, want: Address | None) -> None:
    assert parse_addr(value) == want


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("15000", "admin_addr: '15000': no host"),
        (":15000", "admin_addr: ':15000': no host"),
        ("localhost:15000", "admin_addr: 'localhost:15000': 'localhost' is not an IP address"),
        ("127.0.0.1:http", "admin_addr: '127.0.0.1:http': 'http' is not a port"),
        ("127.0.0.1:70000", "admin_addr: '127.0.0.1:70000': '70000' is not a port"),
        ("127.0.0.1:\u00b2", "admin_addr: '127.0.0.1:\u00b2': '\u00b2' is not a port"),
        (
            "127.0.0.1:\uff18\uff10",
            "admin_addr: '127.0.0.1:\uff18\uff10': '\uff18\uff10' is not a port",
        ),
        ("::1:15000", "admin_addr: '::1:15000': an IPv6 address goes in brackets"),
    ],
)
def test_parse_addr_refuses_with_the_setting_named(value: str, error: str) -> None:
    with pytest.raises(AddressError) as err:
        parse_addr(value, "admin_addr")
    assert str(err.value).startswith(error)


def test_address_prints_as_it_parses() -> None:
    for text in ("127.0.0.1:15000", "[::1]:15000"):
        assert str(parse_addr(text)) == text


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _get(socket: Path, path: str) -> int:
    connector = aiohttp.UnixConnector(path=str(socket))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"http://weft{path}") as resp,
    ):
        return resp.status


def test_each_listener_serves_only_its_own_routes(tmp_path: Path) -> None:
    async def main() -> dict[tuple[str, str], int]:
        runners = await adminserver.serve(
            [
                adminserver.Listener(
                    "admin",
                    (web.get("/config_dump", _ok), web.get("/metrics", _ok)),
                    socket=tmp_path / "admin.sock",
                ),
                adminserver.Listener(
                    "metrics", (web.get("/metrics", _ok),), socket=tmp_path / "metrics.sock"
                ),
            ]
        )
        try:
            return {
                (sock, path): await _get(tmp_path / f"{sock}.sock", path)
                for sock in ("admin", "metrics")
                for path in ("/config_dump", "/metrics")
            }
        finally:
            for runner in runners:
                await runner.cleanup()

    assert asyncio.run(main()) == {
        ("admin", "/config_dump"): 200,
        ("admin", "/metrics"): 200,
        ("metrics", "/config_dump"): 404,
        ("metrics", "/metrics"): 200,
    }


def test_a_listener_that_cannot_bind_stops_the_ones_started(tmp_path: Path) -> None:
    async def main() -> None:
        await adminserver.serve(
            [
                adminserver.Listener("admin", (web.get("/x", _ok),), socket=tmp_path / "a.sock"),
                adminserver.Listener("metrics", (web.get("/x", _ok),), "192.0.2.1:1"),
            ]
        )

    with pytest.raises(OSError):
        asyncio.run(main())
    # The first listener was cleaned up: nothing answers on its socket any more.
    with pytest.raises((aiohttp.ClientError, OSError)):
        asyncio.run(_get(tmp_path / "a.sock", "/x"))


def test_a_bad_listener_address_is_refused_at_the_command_line() -> None:
    import click
    from click.testing import CliRunner

    from meshcore import nodeoptions

    @click.command()
    @nodeoptions.admin_addr("127.0.0.1:15000")
    def run(admin_addr: str) -> None:
        click.echo(admin_addr)

    runner = CliRunner()
    assert runner.invoke(run, []).output == "127.0.0.1:15000\n"
    assert runner.invoke(run, ["--admin-addr", ""]).output == "\n"
    bad = runner.invoke(run, ["--admin-addr", "localhost:15000"])
    assert bad.exit_code == 2
    assert "admin_addr: 'localhost:15000': 'localhost' is not an IP address" in bad.output
