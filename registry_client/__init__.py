"""Web3 client for the QuantizedModelRegistry contract, its compiled artifact and the embedded chain node.

py_ecc (imported by web3, eth-account and py-evm) raises the interpreter's recursion limit to 100,000
at import. Far below that depth the C stack overflows, so a deep JSON document or any runaway
recursion would kill the whole process with SIGSEGV instead of raising RecursionError. The modules of
this package that import those libraries call :func:`restore_recursion_limit` right after.
"""

from __future__ import annotations

import sys

# the limit in force before any of those libraries was imported (this package is imported first)
RECURSION_LIMIT = sys.getrecursionlimit()


def restore_recursion_limit(at_least: int = 0) -> None:
    """Put the recursion limit back to what it was before py_ecc raised it (or ``at_least``)."""
    sys.setrecursionlimit(max(RECURSION_LIMIT, at_least))
