"""Which chain, key and registry a server uses, from its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantledger.config import Settings
from quantledger.paging import PageTokens
from quantledger.registry.reader import RegistryReader
from quantledger.registry.registrar import Registrar
from registry_client.address_book import AddressBook
from registry_client.errors import KeyUnavailable

if TYPE_CHECKING:  # web3 and eth-account load only when a chain is used
    from eth_account.signers.local import LocalAccount

    from registry_client.client import RegistryClient


def signing_account(settings: Settings) -> LocalAccount:
    """``QUANTLEDGER_CHAIN_KEY`` / ``QUANTLEDGER_CHAIN_KEY_FILE``, else the data dir's admin key."""
    from registry_client.keys import key_from_environment

    account = key_from_environment(default_file=settings.admin_key_path)
    if account is None:
        raise KeyUnavailable(
            f"no chain key: set QUANTLEDGER_CHAIN_KEY or QUANTLEDGER_CHAIN_KEY_FILE, or run `quantledger up` "
            f"once to create {settings.admin_key_path}"
        )
    return account


def make_registrar(settings: Settings) -> Registrar | None:
    """A registrar when a chain is configured; None means outputs are not recorded (UNREGISTERED)."""
    if not settings.chain_url:
        return None
    return Registrar(
        settings.chain_url,
        signing_account(settings),
        AddressBook.in_home(settings.home),
        address=settings.registry_address or None,
    )


def make_reader(settings: Settings) -> RegistryReader:
    """A reader of the registry at the configured address, or the one the address book records."""
    url = settings.chain_url or settings.embedded_chain_url

    def connect() -> RegistryClient:
        from registry_client.client import RegistryClient

        address = settings.registry_address or None
        return RegistryClient.connect(url, address=address, address_book=AddressBook.in_home(settings.home))

    return RegistryReader(connect, PageTokens.in_home(settings.home), chain_url=url)
