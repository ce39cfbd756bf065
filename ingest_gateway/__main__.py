"""``python -m ingest_gateway``: settings from the environment, then serve until SIGTERM."""

from __future__ import annotations

import os

import uvloop
from aiohttp import web

from contracts.logs import configure_logging
from contracts.settings import GatewaySettings
from ingest_gateway.app import AUTO_DECOMPRESS, create_app


def main() -> None:
    settings = GatewaySettings.from_env(os.environ)
    configure_logging("ingest_gateway", f"gateway-{settings.port}", settings.log_level)
    # SIGTERM: aiohttp stops accepting, finishes in-flight requests, then the cleanup
    # context flushes the producer; the process exits 0.
    web.run_app(create_app(settings), host=settings.host, port=settings.port,
                access_log=None, print=None, shutdown_timeout=10,
                loop=uvloop.new_event_loop(), auto_decompress=AUTO_DECOMPRESS)


if __name__ == "__main__":
    main()
