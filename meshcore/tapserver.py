"""`GET /tap`: a process's access events as they happen, for the admin listener only.

`application/x-ndjson`: `{"type":"hello","component":..,"node":..}` once subscribed, then
`{"type":"event", ..AccessEvent..}` per event that passes the query's TapFilter, and
`{"type":"dropped","count":N}` when this subscriber fell behind its bounded queue. A bad query
is a 400 naming the parameter; past the process's subscriber limit, a 429. The subscription
ends when the client goes away (checked at least every CLIENT_CHECK seconds) or the hub
closes (the process stops).
"""

from __future__ import annotations

import json

import structlog
from aiohttp import web

from meshcore.accessevents import TapFilter, TapHub, TooManySubscribers, event_line

log = structlog.get_logger("tap")

CLIENT_CHECK = 1.0  # seconds: how soon a gone client's subscription is released
CONTENT_TYPE = "application/x-ndjson"


def _line(obj: object) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def tap_route(hub: TapHub) -> web.RouteDef:
    async def tap(request: web.Request) -> web.StreamResponse:
        try:
            flt = TapFilter.from_query(request.query)
        except ValueError as err:
            return web.json_response({"error": f"/tap: {err}"}, status=400)
        try:
            sub = hub.subscribe(flt)
        except TooManySubscribers as err:
            return web.json_response({"error": str(err)}, status=429)
        log.info("tap.subscribed", filter=flt.to_query(), subscribers=hub.subscribers)
        try:
            response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
            await response.prepare(request)
            await response.write(
                _line({"type": "hello", "component": hub.component, "node": hub.node})
            )
            while not sub.closed:
                events, dropped = await sub.take(CLIENT_CHECK)
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                if events or dropped:
                    chunk = b"".join(_line(event_line(e)) for e in events)
                    if dropped:
                        chunk += _line({"type": "dropped", "count": dropped})
                    await response.write(chunk)
            return response
        except (ConnectionResetError, ConnectionError):
            return web.Response()  # (the client is gone: nobody reads it)
        finally:
            hub.unsubscribe(sub)
            log.info("tap.unsubscribed", subscribers=hub.subscribers)

    return web.get("/tap", tap)
