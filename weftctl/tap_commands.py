"""`weftctl tap`: a lab's connections (and, through waypoints, requests) as they happen, as
`linkerd viz tap` shows them; merged from every node's ztunnel and every waypoint replica by
weftctl.tap.LabTap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import click

from meshcore.accessevents import VERDICTS, TapFilter
from weftctl.tap import LabTap, TapError


def _short(principal: str) -> str:
    """`spiffe://td/ns/demo/sa/client` -> `demo/client` (anything else as it is)."""
    parts = principal.split("/")
    if principal.startswith("spiffe://") and len(parts) == 7 and parts[3] == "ns":
        return f"{parts[4]}/{parts[6]}"
    return principal


def _side(event: dict[str, Any], side: str) -> str:
    workload = event.get(f"{side}_workload") or ""
    namespace = event.get(f"{side}_namespace") or ""
    name = f"{namespace}/{workload}" if workload and namespace else workload
    principal = _short(event.get(f"{side}_principal") or "")
    if side == "destination":
        name = name or event.get("destination_service") or ""
        address = event.get("destination_address") or ""
        name = f"{name}:{address.rpartition(':')[2]}" if name and address else name or address
    else:
        name = name or event.get("source_address") or "?"
    return f"{name} ({principal})" if principal else name


def format_event(event: dict[str, Any]) -> str:
    """One line for people: time, reporter, source -> destination, bytes, duration,
    verdict and policy, and for requests the method, path and response code."""
    stamp = event.get("time", 0.0)
    clock = time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"
    verdict = event.get("verdict", "")
    if event.get("policy"):
        verdict += f" {event['policy']}"
    if event.get("reason") and event.get("verdict") != "allow":
        verdict += f" ({event['reason']})"
    parts = [
        clock,
        f"{event.get('reporter', ''):<11}",
        f"{_side(event, 'source')} -> {_side(event, 'destination')}",
    ]
    if event.get("kind") == "request":
        parts.append(
            f"{event.get('method', '')} {event.get('path', '')} {event.get('response_code', 0)}"
        )
    parts += [
        f"{event.get('bytes_sent', 0)}B/{event.get('bytes_received', 0)}B",
        f"{event.get('duration_ms', 0):g}ms",
        verdict,
    ]
    if event.get("response_flags", "-") not in ("-", ""):
        parts.append(f"flags={event['response_flags']}")
    return "  ".join(parts)


async def run_tap(
    lab_name: str, flt: TapFilter, output: str, count: int, timeout: float
) -> tuple[int, float]:
    """Print events until `count` were shown or `timeout` went by (0: no limit); how many
    were shown and how long it ran."""
    shown = 0
    started = time.monotonic()

    def notice(text: str) -> None:
        click.echo(f"# {text}", err=True)

    async with LabTap(lab_name, flt, notice=notice) as tap:
        notice(f"tapping {', '.join(tap.sources)}")

        async def show() -> None:
            nonlocal shown
            async for event in tap:
                if output == "json":
                    click.echo(json.dumps(event, separators=(",", ":")))
                else:
                    click.echo(format_event(event))
                sys.stdout.flush()
                shown += 1
                if count and shown >= count:
                    return

        with contextlib.suppress(TimeoutError):  # --timeout: stop there
            await asyncio.wait_for(show(), timeout or None)
    return shown, time.monotonic() - started


@click.command()
@click.option("--lab", "lab_name", default="default", envvar="WEFT_LAB", show_default=True)
@click.option("-n", "--namespace", default="", help="Only connections from or to this namespace.")
@click.option("--pod", default="", help="Only connections from or to this pod.")
@click.option(
    "--identity",
    default="",
    help="Only connections from or to this identity (spiffe://..., ns/NS/sa/SA or NS/SA).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Only to this destination port."
)
@click.option("--verdict", type=click.Choice(VERDICTS), default=None)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="One line per event for people, or JSON lines for scripts.",
)
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after S seconds (with --count: fail if fewer came).",
)
def tap(
    lab_name: str,
    namespace: str,
    pod: str,
    identity: str,
    port: int | None,
    verdict: str | None,
    output: str,
    count: int | None,
    timeout: float | None,
) -> None:
    """Stream connection and request events from every ztunnel and waypoint as they end:
    source and destination workload and identity, bytes, duration, verdict and deciding
    policy, response code. Ctrl-C stops."""
    flt = TapFilter(namespace, pod, identity, port or 0, verdict or "")
    try:
        shown, _took = asyncio.run(run_tap(lab_name, flt, output, count or 0, timeout or 0))
    except TapError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        return
    if count and shown < count:
        raise click.ClickException(f"{shown} of {count} events came within {timeout:g} s")
