"""Command-line validation: bad arguments exit 2 before anything starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sample_apps import http_echo, load_client, tcp_echo

URL = "http://127.0.0.1:1/"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([URL], "give --rate, --count, or both"),
        ([URL, "--count", "0"], "--count"),
        ([URL, "--rate", "0"], "--rate"),
        ([URL, "--rate", "-3"], "--rate"),
        ([URL, "--rate", "1e9"], "--rate"),
        ([URL, "--count", "5", "--duration", "0"], "--duration"),
        ([URL, "--count", "5", "--duration", "86401"], "--duration"),
        ([URL, "--count", "5", "--duration", "soon"], "--duration"),
        ([URL, "--count", "5", "--timeout", "0"], "--timeout"),
        ([URL, "--count", "5", "--interval", "-1"], "--interval"),
        ([URL, "--count", "5", "--concurrency", "0"], "--concurrency"),
        ([URL, "--rate", "10", "--concurrency", "4"], "--concurrency applies to --count"),
        ([URL, "--count", "5", "-o", "yaml"], "-o"),
        (["https://example.com/", "--count", "5"], "only http://"),
        (["example.com", "--count", "5"], "only http://"),
        (["--count", "5"], "URL"),
    ],
)
def test_load_client_rejects_bad_arguments_with_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(load_client.main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_load_client_help_mentions_every_option() -> None:
    result = CliRunner().invoke(load_client.main, ["--help"])
    assert result.exit_code == 0
    for option in ("--rate", "--count", "--concurrency", "--duration", "--timeout"):
        assert option in result.output
    for option in ("--new-connections", "--http2", "--interval", "--output"):
        assert option in result.output


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        (http_echo.main, ["--port", "70000"], "--port"),
        (http_echo.main, ["--upstream", "https://backend/"], "only http://"),
        (http_echo.main, ["--upstream", "backend:8080"], "only http://"),
        (tcp_echo.main, ["--port", "-1"], "--port"),
    ],
)
def test_servers_reject_bad_arguments_with_exit_2(
    command: object, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(command, args)  # type: ignore[arg-type]
    assert result.exit_code == 2, result.output
    assert message in result.output
