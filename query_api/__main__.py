"""``python -m query_api``: settings from the environment, then serve until SIGTERM."""

from __future__ import annotations

import os

import uvloop
from aiohttp import web

from contracts.logs import configure_logging
from contracts.settings import QuerySettings
from query_api.app import create_app


def main() -> None:
    settings = QuerySettings.from_env(os.environ)
    configure_logging("query_api", f"query-{settings.port}", settings.log_level)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, access_log=None,
                print=None, shutdown_timeout=10, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
