"""`weftctl why SRC DST`: is this connection allowed, by which path and which policy.

Exit codes (stable, for scripts): 0 allowed, 1 denied, 2 usage or a SRC/DST the mesh does
not know, 3 the lab could not be read, 4 `--probe` found the data plane disagreeing.
"""

from __future__ import annotations

import asyncio
import json
import sys

import click
import yaml

from weftctl.explain.model import TargetError
from weftctl.explain.render import explanation_text
from weftctl.output import OUTPUT_OPTION
from weftctl.whylab import LabUnreachable, why_json
from weftctl.whyprobe import ProbeError

EXIT_ALLOW, EXIT_DENY, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DISAGREES = 0, 1, 2, 3, 4


def _headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        name, colon, text = value.partition(":")
        if not colon or not name.strip():
            raise click.BadParameter(f"{value!r} is not NAME:VALUE", param_hint="--header")
        out.append((name.strip().lower(), text.strip()))
    return tuple(out)


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--lab", "lab_name", default="default", envvar="WEFT_LAB", show_default=True)
@click.option("--probe", is_flag=True, help="Also send one real connection and compare.")
@click.option("--method", default="", help="HTTP method to judge L7 rules and routes by.")
@click.option("--path", "path", default="", help="HTTP path to judge L7 rules and routes by.")
@click.option("--header", "headers", multiple=True, help="NAME:VALUE (repeatable).")
@OUTPUT_OPTION
def why(
    src: str,
    dst: str,
    lab_name: str,
    probe: bool,
    method: str,
    path: str,
    headers: tuple[str, ...],
    output: str,
) -> None:
    """Why SRC may or may not reach DST: each side, the path, every policy that applies.

    SRC is NAMESPACE/POD. DST is NAMESPACE/POD:PORT, SERVICE.NAMESPACE[:PORT] or IP:PORT.
    Exit 0 allowed, 1 denied, 2 bad SRC/DST, 3 lab unreachable, 4 --probe disagrees.

    Example: weftctl why demo/frontend-7c9d backend.demo:8080 --path /api --probe
    """
    if path and not path.startswith("/"):
        raise click.BadParameter("must start with /", param_hint="--path")
    try:
        data = asyncio.run(
            why_json(
                lab_name,
                src,
                dst,
                probe=probe,
                method=method,
                path=path,
                headers=_headers(headers),
            )
        )
    except TargetError as err:
        click.secho(f"error: {err}", fg="red", err=True)
        sys.exit(EXIT_USAGE)
    except (LabUnreachable, ProbeError) as err:
        click.secho(f"error: {err}", fg="red", err=True)
        sys.exit(EXIT_UNREACHABLE)
    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=True))
    else:
        click.echo(explanation_text(data))
    probed = data.get("probe")
    if probed is not None and not probed["agrees"]:
        click.secho(
            f"DISAGREEMENT: {probed.get('disagreement', '')}", fg="red", bold=True, err=True
        )
        sys.exit(EXIT_DISAGREES)
    sys.exit(EXIT_ALLOW if data["verdict"] == "allow" else EXIT_DENY)
