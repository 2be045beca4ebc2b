"""``quantledger serve reproducer --attester-key FILE``: reproduce new records automatically and co-attest
the same bytes from that key (jobs/reproducer.py; docs/REPRODUCE.md "Reproducer service").

It runs alone, like ``serve chain``: no gRPC surface of its own; its jobs, journal and reproduced files are
in its data dir (``QUANTLEDGER_HOME``), so a second home on the same machine is a second, independent
attester. Stops on SIGTERM or SIGINT after the event in hand; ``--until-idle`` stops once every event up
to the chain's head is handled.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import signal
from typing import Any

from quantledger.config import Settings, parse_duration
from quantledger.errors import InvalidArgument

_SIZE_UNITS = {"K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def add_reproducer_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("reproducer (serve reproducer; docs/REPRODUCE.md)")
    group.add_argument("--attester-key", default=None, metavar="FILE", help="hex private key file of this attester")
    group.add_argument(
        "--provenance-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="where provenance JSONs are published (found by SHA-256); repeat",
    )
    group.add_argument("--sources", default="", help="comma-separated source digests, hub repo ids or paths (all)")
    group.add_argument("--types", default="", help="comma-separated quant types to reproduce (default: all)")
    group.add_argument("--from-block", type=int, default=0, help="first block to follow when the journal is empty")
    group.add_argument("--disk-budget", default="", metavar="SIZE", help="skip records whose source+output exceed it")
    group.add_argument("--time-budget", default="", metavar="DURATION", help="cancel a reproduction running longer")
    group.add_argument("--registry", default=None, metavar="ADDRESS", help="registry contract (default: address book)")
    group.add_argument("--keep", action="store_true", help="keep reproduced files (default: only their provenance)")
    group.add_argument("--until-idle", action="store_true", help="stop once every event up to the head is handled")


def disk_size(text: str) -> int:
    """``--disk-budget 20G``: a positive whole number of decimal K, M, G or T bytes (or plain bytes)."""
    if not text:
        return 0
    number, unit = (text[:-1], text[-1].upper()) if text[-1].upper() in _SIZE_UNITS else (text, "")
    if not number.isdigit() or int(number) <= 0:
        raise InvalidArgument(f"--disk-budget {text!r}: expected a size such as 500M or 20G")
    return int(number) * _SIZE_UNITS.get(unit, 1)


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def cmd_reproducer(args: argparse.Namespace, settings: Settings) -> int:
    from quantledger.jobs.reproducer import ReproducerConfig

    if not args.attester_key:
        raise InvalidArgument("serve reproducer needs --attester-key FILE: the key it co-attests with")
    if not settings.chain_url:
        raise InvalidArgument("serve reproducer needs --chain-url (or QUANTLEDGER_CHAIN_URL)")
    if not args.provenance_dir:
        raise InvalidArgument("serve reproducer needs --provenance-dir DIR: where to find provenance")
    if args.from_block < 0:
        raise InvalidArgument("--from-block must not be negative")
    config = ReproducerConfig(
        provenance_dirs=tuple(pathlib.Path(d).resolve() for d in args.provenance_dir),
        sources=_items(args.sources),
        types=tuple(t.upper() for t in _items(args.types)),
        from_block=args.from_block,
        disk_budget_bytes=disk_size(args.disk_budget),
        time_budget_seconds=parse_duration(args.time_budget, "--time-budget") or 0.0,
        keep=args.keep,
    )
    if args.registry:
        settings = dataclasses.replace(settings, registry_address=args.registry)
    return asyncio.run(_serve(settings, pathlib.Path(args.attester_key), config, args.until_idle))


async def _serve(settings: Settings, key_file: pathlib.Path, config: Any, until_idle: bool) -> int:
    from quantledger.jobs.engine import JobEngine
    from quantledger.jobs.reproducer import Reproducer
    from quantledger.jobs.store import SqliteJobStore
    from quantledger.registry.registrar import Registrar
    from registry_client.address_book import AddressBook
    from registry_client.keys import read_key_file

    account = read_key_file(key_file)
    book = AddressBook.in_home(settings.home)
    registrar = Registrar(settings.chain_url, account, book, address=settings.registry_address or None)
    (settings.home / "reproducer").mkdir(parents=True, exist_ok=True)
    engine = JobEngine(settings, SqliteJobStore(str(settings.home / "reproducer" / "jobs.sqlite3")), registrar)

    def client() -> Any:
        from registry_client.client import RegistryClient

        address = settings.registry_address or None
        return RegistryClient.connect(settings.chain_url, address=address, address_book=book)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await engine.start()
    try:
        reproducer = Reproducer(engine, client, config)
        print(f"reproducer {account.address}: following {settings.chain_url}", flush=True)
        await reproducer.run(stop, until_idle=until_idle)
    finally:
        await engine.shutdown()
    return 0
