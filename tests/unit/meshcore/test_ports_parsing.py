"""meshcore/ports.py: the one port parser, ASCII digits only."""

from __future__ import annotations

import pytest

from meshcore.ports import PortError, parse_port, parse_port_list


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("1", 1),
        ("80", 80),
        ("8080", 8080),
        ("65535", 65535),
        ("00080", 80),
    ],
)
def test_parse_port_accepts_ascii_digits_in_range(text: str, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "00000",
        "65536",
        "99999",
        "100000",
        "000080",
        "-1",
        "+80",
        " 80",
        "80 ",
        "8_0",
        "0x50",
        "80.0",
        "http",
        "²",  # isdigit() but int() refuses it
        "\uff18\uff10\uff18\uff10",  # fullwidth 8080: isdigit() and int() accepts it
        "\u0668\u0660",  # Arabic-Indic 80
        "1\u0660",  # ASCII then a non-ASCII digit
        "80\n",
    ],
)
def test_parse_port_refuses_anything_else_naming_the_text(text: str) -> None:
    with pytest.raises(PortError) as caught:
        parse_port(text)
    assert repr(text) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("text", "ports"),
    [
        ("", ()),
        ("  ", ()),
        ("80", (80,)),
        ("443,80", (80, 443)),
        (" 5432 , 6379 ", (5432, 6379)),
        ("80,80", (80,)),
    ],
)
def test_parse_port_list(text: str, ports: tuple[int, ...]) -> None:
    assert parse_port_list(text) == ports


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("80,²", "²"),
        ("80,,443", ""),
        ("80,", ""),
        ("\uff18\uff10", "\uff18\uff10"),
        ("80,65536", "65536"),
    ],
)
def test_parse_port_list_refuses_a_bad_item_naming_it(text: str, bad: str) -> None:
    with pytest.raises(PortError) as caught:
        parse_port_list(text)
    assert caught.value.text == bad
