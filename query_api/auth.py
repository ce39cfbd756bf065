"""Bearer-token auth, scoped per site: stats are private unless auth is explicitly off.

A presented token is hashed (SHA-256) and looked up in the process's cached copy of the
``tokens`` collection (``contracts.registry``: refreshed every 2 s, so a new or revoked
token counts within seconds; the last known tokens stay in force while MongoDB is down).
No token, an unknown one or a revoked one: 401. A token that is not an admin token reads
only its sites: any other ``site_id`` (also the implied ``default``) is a 403 on every
endpoint that takes a site, and ``/stats/sites`` lists only its sites (``GRANT``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from contracts.event import DEFAULT_SITE
from contracts.httpkit import whole_request_error
from contracts.registry import RegistrySource
from contracts.tenancy import Grant

# Probes, the API description and the dashboard page (static: its script sends the token
# the person types with each stats request) are public here; NGINX serves only the
# dashboard of them (infra/nginx/routes.conf), the rest stay on the services' own ports.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
                          "/dashboard"})
UNSCOPED_PATHS = frozenset({"/stats/sites"})  # takes no site; filtered by the grant instead
GRANT = web.RequestKey("grant", Grant)  # set on every authenticated request


def _unauthorized() -> web.Response:
    return whole_request_error(401, "unauthorized", "a valid bearer token is required",
                               headers={"WWW-Authenticate": 'Bearer realm="stats"'})


def auth_middleware(registry: RegistrySource
                    ) -> Callable[..., Awaitable[web.StreamResponse]]:

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return _unauthorized()
        # Header bytes that are not UTF-8 cannot be a token: replaced, they match nothing.
        grant = registry.current().grant_for(token.strip().encode("utf-8", "replace"))
        if grant is None:
            return _unauthorized()
        if not grant.admin and request.path not in UNSCOPED_PATHS:
            denied = [s for s in request.query.getall("site_id", [DEFAULT_SITE])
                      if not grant.allows(s)]
            if denied:
                return whole_request_error(403, "forbidden_site", f"this token may not read "
                                           f"site {denied[0][:64]!r}")
        request[GRANT] = grant
        return await handler(request)

    return middleware
