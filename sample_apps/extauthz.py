"""An ext_authz server, as Istio's samples/extauthz: Envoy's gRPC Authorization/Check on one
port, the HTTP ext_authz protocol on another, both deciding the same way.

    python -m sample_apps.extauthz [--grpc-port 9000] [--http-port 8000] [--host 0.0.0.0]
                                   [--delay SECONDS]

A request is allowed iff it carries `x-ext-authz: allow`. Allowed: the answer sets
`x-ext-authz-check-result: allowed` for the upstream (gRPC: ok_response headers; HTTP: a
header of the 200, which a provider's `headersToUpstreamOnAllow` passes on). Denied: 403 with
`x-ext-authz-check-result: denied` and the body "denied by ext_authz for not found header
`x-ext-authz: allow` in the request". For tests: `--delay` (or a request header
`x-ext-authz-delay: <seconds>`) waits before answering; `x-ext-authz-pad: <bytes>` pads the
answer (the deny body, or an allowed header) to exercise a client's size bound; an allowed
request whose check carried a body gets `x-ext-authz-body-bytes: <its size>`. Written
from the published proto (meshcore/api/ext_authz.proto, Envoy's field numbers) with grpcio
and aiohttp; each check is logged (`extauthz.checked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import click
import grpc
from aiohttp import web
from google.protobuf.wrappers_pb2 import BoolValue
from structlog.typing import FilteringBoundLogger

from meshcore.api import ext_authz_pb2 as pb
from meshcore.api import ext_authz_pb2_grpc as pb_grpc
from sample_apps.runtime import configure_logging, run

ALLOW_HEADER = "x-ext-authz"
ALLOW_VALUE = "allow"
RESULT_HEADER = "x-ext-authz-check-result"
DELAY_HEADER = "x-ext-authz-delay"
PAD_HEADER = "x-ext-authz-pad"
BODY_BYTES_HEADER = "x-ext-authz-body-bytes"
DENIED_BODY = (
    f"denied by ext_authz for not found header `{ALLOW_HEADER}: {ALLOW_VALUE}` in the request"
)
MAX_DELAY = 120.0  # seconds a request may ask us to wait
MAX_PAD = 1024 * 1024  # bytes a request may ask us to pad with
GRPC_PERMISSION_DENIED = 7


@dataclass(frozen=True)
class Decision:
    allowed: bool
    delay: float  # seconds to wait before answering
    pad: int  # bytes to pad the answer with


def decide(headers: Mapping[str, str], default_delay: float = 0.0) -> Decision:
    """The verdict on a request's headers (lower-case names)."""
    allowed = headers.get(ALLOW_HEADER, "").strip().lower() == ALLOW_VALUE
    delay = default_delay
    with contextlib.suppress(ValueError):
        delay = float(headers.get(DELAY_HEADER, delay))
    pad = headers.get(PAD_HEADER, "0")
    return Decision(
        allowed,
        min(max(delay, 0.0), MAX_DELAY),
        min(int(pad), MAX_PAD) if pad.isdigit() else 0,
    )


def check_response(decision: Decision, body_bytes: int = 0) -> pb.CheckResponse:
    """The gRPC answer for a decision (`body_bytes`: of the body the check carried)."""

    def header(name: str, value: str) -> pb.HeaderValueOption:
        return pb.HeaderValueOption(
            header=pb.HeaderValue(key=name, value=value), append=BoolValue(value=False)
        )

    if decision.allowed:
        headers = [header(RESULT_HEADER, "allowed")]
        if body_bytes:
            headers.append(header(BODY_BYTES_HEADER, str(body_bytes)))
        if decision.pad:
            headers.append(header("x-ext-authz-padding", "p" * decision.pad))
        return pb.CheckResponse(
            status=pb.RpcStatus(code=0), ok_response=pb.OkHttpResponse(headers=headers)
        )
    return pb.CheckResponse(
        status=pb.RpcStatus(code=GRPC_PERMISSION_DENIED, message="denied by ext_authz"),
        denied_response=pb.DeniedHttpResponse(
            status=pb.HttpStatus(code=pb.HttpStatus.Forbidden),
            headers=[header(RESULT_HEADER, "denied")],
            body=DENIED_BODY + "p" * decision.pad,
        ),
    )


class Authorization(pb_grpc.AuthorizationServicer):
    def __init__(self, log: FilteringBoundLogger, delay: float) -> None:
        self.log = log
        self.delay = delay

    async def Check(  # (the proto's name)
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        http = request.attributes.request.http
        decision = decide(http.headers, self.delay)
        body_bytes = len(http.raw_body) or len(http.body.encode())
        if decision.delay:
            await asyncio.sleep(decision.delay)
        self.log.info(
            "extauthz.checked",
            protocol="grpc",
            allowed=decision.allowed,
            body_bytes=body_bytes,
            method=http.method,
            path=http.path[:300],
            host=http.host,
            source_principal=request.attributes.source.principal,
            destination_principal=request.attributes.destination.principal,
        )
        return check_response(decision, body_bytes)


def http_app(log: FilteringBoundLogger, delay: float) -> web.Application:
    async def check(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        decision = decide(headers, delay)
        body_bytes = len(await request.read())
        if decision.delay:
            await asyncio.sleep(decision.delay)
        log.info(
            "extauthz.checked",
            protocol="http",
            allowed=decision.allowed,
            body_bytes=body_bytes,
            method=request.method,
            path=request.path_qs[:300],
            host=request.host,
        )
        if decision.allowed:
            extra = {"x-ext-authz-padding": "p" * decision.pad} if decision.pad else {}
            if body_bytes:
                extra[BODY_BYTES_HEADER] = str(body_bytes)
            return web.Response(status=200, headers={RESULT_HEADER: "allowed", **extra})
        return web.Response(
            status=403,
            headers={RESULT_HEADER: "denied"},
            text=DENIED_BODY + "p" * decision.pad,
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", check)
    return app


async def serve(
    host: str, grpc_port: int, http_port: int, delay: float, log: FilteringBoundLogger,
    stop: asyncio.Event, ready: asyncio.Event | None = None,
) -> int:  # fmt: skip
    server = grpc.aio.server()
    pb_grpc.add_AuthorizationServicer_to_server(Authorization(log, delay), server)
    bound = server.add_insecure_port(f"{host}:{grpc_port}")
    await server.start()
    runner = web.AppRunner(http_app(log, delay), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, http_port)
    await site.start()
    log.info("extauthz.listening", grpc_port=bound, http_port=http_port, host=host)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await server.stop(grace=1.0)
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=9000, show_default=True)
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option(
    "--delay",
    type=click.FloatRange(0, MAX_DELAY),
    default=0.0,
    help="Seconds to wait before each answer (a request's x-ext-authz-delay overrides it).",
)
def main(grpc_port: int, http_port: int, host: str, delay: float) -> None:
    log = configure_logging("extauthz")
    sys.exit(run(lambda stop: serve(host, grpc_port, http_port, delay, log, stop), log))


if __name__ == "__main__":
    main()
