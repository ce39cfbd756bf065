"""``python -m admin``: manage the sites a deployment serves and the stats tokens.

    python -m admin sites add shop [--max-pages N] [--max-events-per-s N] [--burst N]
                                   [--origin https://shop.example ...]
    python -m admin sites set shop [--max-pages N] [--max-events-per-s N] [--burst N]
                                   [--shards N]
    python -m admin sites list
    python -m admin sites remove shop
    python -m admin tokens add --sites shop,blog     (or --admin: every site)
    python -m admin tokens list
    python -m admin tokens revoke <id>
    python -m admin init [--admin-token-env VAR]

``add`` replaces every setting of a registered site (the ones not given get their defaults);
``set`` changes only the ones given. ``--shards N`` splits a hot site's counting over N Redis
units (``contracts.keys.unit_of``); it can only grow, as each unit keeps what it counted.
``make sites ARGS="..."`` and ``make tokens ARGS="..."``
run it with the stack's settings
(``.run/stack.env``); elsewhere it reads ``MONGO_URL`` and ``MONGO_DB`` from the
environment like the services. A new token is printed once and stored only as its SHA-256.
Running gateways and query APIs see every change within a few seconds
(``contracts.registry``). Exit status: 0 done, 1 nothing to do it to (no such site or
token), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import orjson

from admin.store import AdminStore, ShardsLowered, UnknownSites, WebsiteTaken
from contracts.event import MAX_SHARDS
from contracts.settings import Backends
from contracts.tenancy import (
    DEFAULT_MAX_EVENTS_PER_S,
    DEFAULT_MAX_PAGES,
    ORIGIN,
    Site,
    valid_site_id,
    valid_umami_website,
)


def _site_id(value: str) -> str:
    if not valid_site_id(value):
        raise argparse.ArgumentTypeError("a site id matches [A-Za-z0-9._-]{1,64}")
    return value


def _origin(value: str) -> str:
    if not ORIGIN.fullmatch(value):
        raise argparse.ArgumentTypeError("an origin is scheme://host[:port], e.g. "
                                         "https://shop.example")
    return value


def _umami_website(value: str) -> str:
    if not valid_umami_website(value.lower()):
        raise argparse.ArgumentTypeError("an Umami website id is a UUID, e.g. "
                                         "50429a93-8479-4073-be80-d5d29c09c2ec")
    return value.lower()


def _at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return number


def _shards(value: str) -> int:
    number = _at_least_one(value)
    if number > MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SHARDS}")
    return number


def _limit_options(command: argparse.ArgumentParser, defaults: bool) -> None:
    """The per-site limits, shared by ``add`` (with defaults) and ``set`` (only those given)."""
    def default(value: int | str) -> str:
        return f" (default {value})" if defaults else ""
    command.add_argument("--max-pages", type=_at_least_one,
                         default=DEFAULT_MAX_PAGES if defaults else None,
                         help="distinct pages the site may count" + default(DEFAULT_MAX_PAGES))
    command.add_argument("--max-events-per-s", type=_at_least_one,
                         default=DEFAULT_MAX_EVENTS_PER_S if defaults else None,
                         help="events/s each gateway process admits for the site, over it "
                         "429" + default(DEFAULT_MAX_EVENTS_PER_S))
    command.add_argument("--burst", type=_at_least_one, default=None,
                         help="events admitted at once after a quiet spell"
                         + default("one second of --max-events-per-s"))
    command.add_argument("--shards", type=_shards, default=None,
                         help="Redis units a hot site's counting is split over, up to "
                         f"{MAX_SHARDS}; only ever raised" + default(1))
    command.add_argument("--umami-website", type=_umami_website, default=None,
                         help="the Umami website id (UUID) whose /api/send events are this "
                         "site's")


def _site_list(value: str) -> list[str]:
    sites = [s.strip() for s in value.split(",") if s.strip()]
    if not sites:
        raise argparse.ArgumentTypeError("name at least one site")
    return [_site_id(s) for s in sites]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m admin", description=__doc__.split("\n")[0])
    groups = top.add_subparsers(dest="group", required=True)
    sites = groups.add_parser("sites", help="the site registry").add_subparsers(
        dest="action", required=True)
    add = sites.add_parser("add", help="register a site (or replace its settings)")
    add.add_argument("site", type=_site_id)
    _limit_options(add, defaults=True)
    add.add_argument("--origin", type=_origin, action="append", default=[],
                     help="an origin the site's pages are served from (repeatable)")
    change = sites.add_parser("set", help="change some settings of a registered site")
    change.add_argument("site", type=_site_id)
    _limit_options(change, defaults=False)
    sites.add_parser("list", help="every registered site, one JSON object a line")
    remove = sites.add_parser("remove", help="stop serving a site (its data stays)")
    remove.add_argument("site", type=_site_id)

    tokens = groups.add_parser("tokens", help="stats tokens").add_subparsers(
        dest="action", required=True)
    new = tokens.add_parser("add", help="create a token and print it once")
    scope = new.add_mutually_exclusive_group(required=True)
    scope.add_argument("--sites", type=_site_list, help="comma-separated sites it may read")
    scope.add_argument("--admin", action="store_true", help="it may read every site")
    tokens.add_parser("list", help="ids, sites and creation times (never the tokens)")
    revoke = tokens.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")

    init = groups.add_parser("init", help="register the default site and make sure an admin "
                             "token exists (what `make up` runs)")
    init.add_argument("--admin-token-env", metavar="VAR", help="store the hash of this "
                      "variable's token as an admin token (docker compose); without it, "
                      "create and print one if no admin token exists yet")
    return top


def _print(doc: object) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_NAIVE_UTC).decode() + "\n")


async def run(args: argparse.Namespace, store: AdminStore) -> int:
    if args.group == "sites":
        if args.action == "add":
            try:
                _print(await store.add_site(Site(args.site, args.max_pages, tuple(args.origin),
                                                 args.max_events_per_s, args.burst,
                                                 args.umami_website, args.shards or 1)))
            except (WebsiteTaken, ShardsLowered) as exc:
                sys.exit(str(exc))
        elif args.action == "set":
            changes: dict[str, int | str] = {name: value for name, value in (
                ("max_pages", args.max_pages), ("max_events_per_s", args.max_events_per_s),
                ("burst_events", args.burst), ("umami_website", args.umami_website),
                ("shards", args.shards))
                if value is not None}
            if not changes:
                sys.exit("nothing to set: give --max-pages, --max-events-per-s, --burst, "
                         "--shards or --umami-website")
            try:
                found = await store.set_site(args.site, changes)
            except (WebsiteTaken, ShardsLowered) as exc:
                sys.exit(str(exc))
            if found is None:
                print(f"no site {args.site!r}", file=sys.stderr)
                return 1
            _print(found)
        elif args.action == "list":
            for doc in await store.sites():
                _print(doc)
        elif not await store.remove_site(args.site):
            print(f"no site {args.site!r}", file=sys.stderr)
            return 1
        return 0
    if args.group == "tokens":
        if args.action == "add":
            try:
                token_id, token = await store.add_token(args.sites or (), admin=args.admin)
            except UnknownSites as exc:
                sys.exit(f"not registered: {', '.join(exc.sites)} (make sites ARGS=\"add …\")")
            print(f"token id {token_id} ({'admin' if args.admin else ','.join(args.sites)}); "
                  "the token, shown only this once:", file=sys.stderr)
            print(token)
        elif args.action == "list":
            for doc in await store.tokens():
                _print(doc)
        elif not await store.revoke_token(args.token_id):
            print(f"no token {args.token_id!r}", file=sys.stderr)
            return 1
        return 0
    # init
    given = os.environ.get(args.admin_token_env, "") if args.admin_token_env else None
    if given is not None and not given.strip():
        sys.exit(f"{args.admin_token_env} is empty: set it to a long random token")
    _print(await store.init(given.strip() if given else None))
    return 0


async def main_async(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    backends = Backends.from_env(os.environ)
    store = AdminStore.connect(backends.mongo_url, backends.mongo_db)
    try:
        return await run(args, store)
    finally:
        await store.close()


def main() -> None:
    sys.exit(asyncio.run(main_async(sys.argv[1:])))


if __name__ == "__main__":
    main()
