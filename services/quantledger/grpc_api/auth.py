"""The principal of the call being served.

The server's authentication layer sets it for each call before the servicer runs; servicers read it
with ``current_principal()`` and pass it to the domain. Without authentication every call is
``LOCAL``.
"""

from __future__ import annotations

import contextvars

from quantledger.security.principal import LOCAL, Principal

_CURRENT: contextvars.ContextVar[Principal] = contextvars.ContextVar("quantledger_principal", default=LOCAL)


def current_principal() -> Principal:
    return _CURRENT.get()


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _CURRENT.set(principal)
