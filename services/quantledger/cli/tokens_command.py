"""``quantledger tokens create|list|revoke``: the API tokens of this data dir (no server needed).

    quantledger tokens create alice --expires 30d --root /models --max-running 1
    quantledger tokens list
    quantledger tokens revoke alice

``create`` prints the token once (store it: only its hash is kept); a running server with
``--auth tokens`` accepts it, and refuses a revoked or expired one, from its next call on.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from quantledger.cli.render import print_json
from quantledger.config import Settings
from quantledger.errors import InvalidArgument, quote_client
from quantledger.recommend.service import parse_bytes
from quantledger.security.principal import Quotas
from quantledger.security.tokens import TokenRecord, TokenStore

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>[smhdw])")


def parse_duration(text: str) -> float:
    """'90s', '15m', '12h', '30d' or '2w' in seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match["number"]) <= 0:
        raise InvalidArgument(f"--expires {quote_client(text)}: write a duration such as 30d, 12h, 15m or 90s")
    return float(match["number"]) * _UNITS[match["unit"]]


def add_tokens_parser(commands: Any, add_common: Any) -> None:
    tokens = commands.add_parser("tokens", help="create, list or revoke API tokens (of this data dir)")
    actions = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a token; it is printed once, only its hash is kept")
    add_common(create)
    create.add_argument("name", help="the principal the token authenticates (jobs belong to it)")
    create.add_argument("--admin", action="store_true", help="may see and act on every principal's jobs")
    create.add_argument("--expires", default=None, metavar="DURATION", help="such as 30d, 12h, 90s (default never)")
    create.add_argument("--root", action="append", default=None, metavar="DIR", help="allowed source root; repeat")
    create.add_argument("--output-dir", action="append", default=None, metavar="DIR", help="allowed output dir; repeat")
    create.add_argument("--max-running", type=int, default=None, metavar="N", help="jobs of this principal at once")
    create.add_argument("--max-queued", type=int, default=None, metavar="N", help="jobs queued or running at once")
    create.add_argument("--max-kept-bytes", default=None, metavar="SIZE", help="output bytes kept, such as 50G")
    listing = actions.add_parser("list", help="every token: name, admin, created, expires, revoked, last used")
    add_common(listing)
    revoke = actions.add_parser("revoke", help="revoke a token; servers refuse it from their next call on")
    add_common(revoke)
    revoke.add_argument("name")


def _directories(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(os.path.realpath(os.path.expanduser(v)) for v in values)


def _count(value: int | None, flag: str) -> int | None:
    if value is not None and value < 0:
        raise InvalidArgument(f"{flag} must be 0 or more")
    return value


def _row(record: TokenRecord) -> str:
    shown = record.public()
    state = f"revoked {shown['revoked']}" if record.revoked is not None else "active"
    return (
        f"{record.name:<20} {record.id}  {'admin' if record.admin else '     '}  created {shown['created']}  "
        f"expires {shown['expires'] or 'never':<20}  last used {shown['last_used'] or 'never':<20}  {state}"
    )


def cmd_tokens(args: argparse.Namespace) -> int:
    store = TokenStore(Settings.from_env().tokens_file)
    action = args.tokens_command
    if action == "create":
        quotas = Quotas(
            max_running_jobs=_count(args.max_running, "--max-running"),
            max_queued_jobs=_count(args.max_queued, "--max-queued"),
            max_kept_bytes=None if args.max_kept_bytes is None else parse_bytes(args.max_kept_bytes),
        )
        token, record = store.create(
            args.name,
            admin=args.admin,
            expires_in=None if args.expires is None else parse_duration(args.expires),
            allowed_roots=_directories(args.root),
            output_dirs=_directories(args.output_dir),
            quotas=quotas,
        )
        if args.json:
            print_json({"token": token, **record.public()})
        else:
            print(f"token {record.name} ({record.id}) created; it is shown only now, keep it secret:", file=sys.stderr)
            print(token)
        return 0
    if action == "list":
        records = store.records()
        if args.json:
            print_json({"tokens": [record.public() for record in records]})
        else:
            for record in records:
                print(_row(record))
        return 0
    record = store.revoke(args.name)
    if args.json:
        print_json(record.public())
    else:
        print(f"token {record.name} ({record.id}) revoked")
    return 0
