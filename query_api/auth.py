"""Bearer-token auth: stats are private unless auth is explicitly turned off."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from contracts.httpkit import whole_request_error

# Probes, the API description and the dashboard page (static: its script sends the token
# the person types with each stats request) are public; every stats answer needs a token.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
                          "/dashboard"})


def auth_middleware(tokens: tuple[str, ...]
                    ) -> Callable[..., Awaitable[web.StreamResponse]]:
    encoded = [t.encode() for t in tokens]

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        # Compare against every token so the time taken doesn't reveal which one matched.
        matched = False
        for candidate in encoded:
            matched |= hmac.compare_digest(given, candidate)
        if scheme.lower() != "bearer" or not given or not matched:
            return whole_request_error(401, "unauthorized", "a valid bearer token is required",
                                       headers={"WWW-Authenticate": 'Bearer realm="stats"'})
        return await handler(request)

    return middleware
