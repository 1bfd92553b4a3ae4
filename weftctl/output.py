"""Tables for people, JSON or YAML for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
import yaml

OUTPUT_OPTION = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def emit(data: Any, output: str) -> bool:
    """Print data as JSON/YAML and return True, or return False for the caller's table."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return True
    if output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=True))
        return True
    return False
