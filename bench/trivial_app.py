"""``python -m bench.trivial_app PORT``: the fastest aiohttp answer to an ingest request.

The limit the gateway is compared with: same framework, same event loop (uvloop), same body
parsing (orjson), but no validation and no Kafka. Any path; POST answers 202, GET 200.
"""

from __future__ import annotations

import sys

import orjson
import uvloop
from aiohttp import web

ACCEPTED = orjson.dumps({"accepted": 1})


async def accept(request: web.Request) -> web.Response:
    if request.method == "POST":
        orjson.loads(await request.read())
        return web.Response(status=202, body=ACCEPTED, content_type="application/json")
    return web.Response(status=200, body=b"{}", content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", accept)
    return app


def main() -> None:
    port = int(sys.argv[1])
    web.run_app(create_app(), host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
