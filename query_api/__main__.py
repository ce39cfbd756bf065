"""``python -m query_api``: settings from the environment, then serve until SIGTERM."""

from __future__ import annotations

import os

import uvloop
from aiohttp import web

from contracts.logs import configure_logging
from contracts.settings import QuerySettings
from query_api.app import create_app

QUERY_BACKLOG = 4096


def main() -> None:
    settings = QuerySettings.from_env(os.environ)
    configure_logging("query_api", f"query-{settings.port}", settings.log_level)
    # A deep accept queue: under a burst NGINX opens upstream connections faster than the
    # loop accepts them, and a connect that times out (1 s) takes the instance out for 2 s.
    web.run_app(create_app(settings), host=settings.host, port=settings.port, access_log=None,
                print=None, shutdown_timeout=10, loop=uvloop.new_event_loop(),
                backlog=QUERY_BACKLOG)


if __name__ == "__main__":
    main()
