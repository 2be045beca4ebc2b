"""Ethereum JSON-RPC 2.0 over an EmbeddedChain: an explicit method table, geth-style errors.

Inputs arrive in JSON-RPC form (hex quantities, camelCase) and go to eth-tester in its form (ints,
snake_case); results come back the other way. A revert in eth_call / eth_estimateGas is error code 3,
"execution reverted", with the revert data, so clients decode the contract's custom errors.

Hostile calls are bounded like geth's: ``eth_call`` / ``eth_estimateGas`` get at most ``gas_cap`` gas
(a larger or missing ``gas`` is clamped, as geth's ``--rpc.gascap``) and ``call_timeout`` seconds
(geth's ``--rpc.evmtimeout``; past it the answer is ``-32000 execution aborted (timeout = …)``), and
they run without the chain lock, so transactions and other clients are answered meanwhile. A batch
holds at most ``MAX_BATCH`` requests. A transaction the node could not journal (a full disk) is
``NOT_PERSISTED``: it was not executed, and the same transaction can be sent again later.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import logging
import re
from collections.abc import Callable
from typing import Any

from eth.exceptions import OutOfGas, VMError
from eth_tester.exceptions import BlockNotFound, TransactionFailed, TransactionNotFound
from eth_tester.exceptions import ValidationError as TesterValidationError
from eth_utils.exceptions import ValidationError as EvmValidationError

from registry_client.chain.node import CallTimeout, EmbeddedChain, TransactionNotPersisted, UndecodableTransaction

log = logging.getLogger(__name__)

PRIORITY_FEE = 10**9
MAX_LOG_RANGE = 1_000
MAX_BATCH = 100
#: gas given to eth_call / eth_estimateGas at most (geth's default --rpc.gascap is 50M; the block gas limit here is 30M)
DEFAULT_GAS_CAP = 30_000_000
#: wall-time bound of one eth_call / eth_estimateGas (geth's default --rpc.evmtimeout)
DEFAULT_CALL_TIMEOUT = 5.0
#: the error code of a transaction the node could not persist (disk full): not accepted, send it again
NOT_PERSISTED = -32050
#: JSON-RPC 2.0's internal error: a failure of the node itself (details only in its log)
INTERNAL_ERROR = -32603
CLIENT_VERSION = "quantledger-embedded-chain/1.0 (eth-tester)"
_NUMERIC = {"gas", "gasPrice", "value", "maxFeePerGas", "maxPriorityFeePerGas", "nonce"}
_RENAME_OUT = {"coinbase": "miner"}
_CAMEL = re.compile(r"_([a-z0-9])")


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _camel(key: str) -> str:
    return _RENAME_OUT.get(key) or _CAMEL.sub(lambda m: m.group(1).upper(), key)


def to_rpc(value: Any, *, transaction: bool = False) -> Any:
    """eth-tester output -> JSON-RPC: ints as hex quantities, camelCase keys, tx ``data`` as ``input``."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        return [to_rpc(v, transaction=transaction) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = "input" if transaction and key == "data" else _camel(key)
            if key == "transactions":
                out[name] = [to_rpc(t, transaction=True) for t in item]
            else:
                out[name] = to_rpc(item)
        return out
    return value


def _quantity(value: Any, name: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise RpcError(-32602, f"{name} must be a hex quantity, got {value!r}")


def _block(value: Any) -> str | int:
    if value is None:
        return "latest"
    if value in ("latest", "pending", "earliest", "safe", "finalized"):
        return str(value)
    if isinstance(value, dict):  # EIP-1898 {"blockNumber": ...}
        return _block(value.get("blockNumber", "latest"))
    return _quantity(value, "block")


def _transaction(params: Any, default_sender: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise RpcError(-32602, "transaction must be an object")
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key in _NUMERIC:
            out[re.sub(r"([A-Z])", r"_\1", key).lower()] = _quantity(value, key)
        elif key in ("input", "data"):
            out["data"] = value
        elif key in ("from", "to"):
            out[key] = value
    # eth_call needs no sender, but py-evm charges the gas to one: default to a funded account
    out.setdefault("from", default_sender)
    return out


def _revert(exc: TransactionFailed) -> RpcError:
    first = exc.args[0] if exc.args else b""
    if isinstance(first, Exception) and first.args:
        first = first.args[0]
    if isinstance(first, str) and first[:2] in ("b'", 'b"'):
        # eth-tester's call() reports the revert data as the repr of a bytes value
        with contextlib.suppress(ValueError, SyntaxError):
            first = ast.literal_eval(first)
    if not isinstance(first, bytes):  # not a REVERT: out of gas, an invalid opcode, ... (geth: -32000 and why)
        return RpcError(-32000, str(first) or "execution failed")
    return RpcError(3, "execution reverted", "0x" + first.hex())


class RpcDispatcher:
    """Answers JSON-RPC request objects (single or batch) from one EmbeddedChain."""

    def __init__(
        self, chain: EmbeddedChain, *, gas_cap: int = DEFAULT_GAS_CAP, call_timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> None:
        if gas_cap < 21_000 or call_timeout <= 0:
            raise ValueError("gas_cap must be at least 21000 and call_timeout positive")
        self.chain = chain
        self.gas_cap = gas_cap
        self.call_timeout = call_timeout
        call = chain.call
        self.methods: dict[str, Callable[[list[Any]], Any]] = {
            "web3_clientVersion": lambda p: CLIENT_VERSION,
            "net_version": lambda p: str(self._chain_id()),
            "net_listening": lambda p: True,
            "eth_chainId": lambda p: hex(self._chain_id()),
            "eth_syncing": lambda p: False,
            "eth_mining": lambda p: False,
            "eth_accounts": lambda p: [],
            "eth_blockNumber": lambda p: hex(call("get_block_by_number", "latest")["number"]),
            "eth_gasPrice": lambda p: hex(self._base_fee() + PRIORITY_FEE),
            "eth_maxPriorityFeePerGas": lambda p: hex(PRIORITY_FEE),
            "eth_feeHistory": self._fee_history,
            "eth_getBalance": lambda p: hex(call("get_balance", p[0], _block(_arg(p, 1)))),
            "eth_getTransactionCount": lambda p: hex(call("get_nonce", p[0], _block(_arg(p, 1)))),
            "eth_getCode": lambda p: call("get_code", p[0], _block(_arg(p, 1))),
            "eth_getStorageAt": lambda p: call("get_storage_at", p[0], _quantity(p[1], "slot"), _block(_arg(p, 2))),
            "eth_call": lambda p: self._reverting("call", p[0], _block(_arg(p, 1))),
            "eth_estimateGas": lambda p: hex(self._reverting("estimate_gas", p[0], _block(_arg(p, 1)))),
            "eth_sendRawTransaction": self._send_raw,
            "eth_getTransactionByHash": lambda p: self._maybe(
                lambda: to_rpc(call("get_transaction_by_hash", p[0]), transaction=True)
            ),
            "eth_getTransactionReceipt": lambda p: self._maybe(lambda: self._receipt(p[0])),
            "eth_getBlockByNumber": lambda p: self._maybe(
                lambda: to_rpc(call("get_block_by_number", _block(p[0]), bool(_arg(p, 1))))
            ),
            "eth_getBlockByHash": lambda p: self._maybe(
                lambda: to_rpc(call("get_block_by_hash", p[0], bool(_arg(p, 1))))
            ),
            "eth_getLogs": self._logs,
        }

    def _tx(self, params: Any) -> dict[str, Any]:
        funded = self.chain.journal.header.funded
        return _transaction(params, funded[0] if funded else "0x" + "00" * 20)

    def _chain_id(self) -> int:
        return int(self.chain.tester.backend.chain.chain_id)

    def _base_fee(self) -> int:
        return int(self.chain.call("get_block_by_number", "latest").get("base_fee_per_gas") or 0)

    def _reverting(self, method: str, params: Any, block: str | int) -> Any:
        """eth_call / eth_estimateGas: gas clamped to the cap (a missing gas gets the cap); a call that
        names no fee pays none (zero fees, zero base fee: like geth, no balance is needed for the gas)."""
        transaction = self._tx(params)
        transaction["gas"] = min(transaction.get("gas", self.gas_cap), self.gas_cap)
        free = not any(key in transaction for key in ("gas_price", "max_fee_per_gas", "max_priority_fee_per_gas"))
        if free:
            transaction.update(max_fee_per_gas=0, max_priority_fee_per_gas=0)
        try:
            return self.chain.bounded(
                method, transaction, block, timeout=self.call_timeout, gas_cap=self.gas_cap, no_base_fee=free
            )
        except CallTimeout as exc:
            raise RpcError(-32000, f"execution aborted (timeout = {self.call_timeout:g}s)") from exc
        except TransactionFailed as exc:
            raise _revert(exc) from exc
        except OutOfGas as exc:  # an estimate that fails even with all the gas it may have
            raise RpcError(-32000, f"gas required exceeds allowance ({self.gas_cap})") from exc
        except VMError as exc:
            raise RpcError(-32000, f"execution failed: {exc}") from exc
        except (TesterValidationError, EvmValidationError) as exc:
            raise RpcError(-32000, str(exc)) from exc

    def _maybe(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (TransactionNotFound, BlockNotFound):
            return None

    def _receipt(self, tx_hash: str) -> Any:
        receipt = self.chain.call("get_transaction_receipt", tx_hash)
        result = to_rpc(receipt)
        for entry in result.get("logs", []):
            entry.pop("type", None)
            entry["removed"] = False
        result.setdefault("type", "0x2")
        return result

    def _send_raw(self, params: list[Any]) -> str:
        raw = params[0] if params else None
        if not isinstance(raw, str) or not raw.startswith("0x"):
            raise RpcError(-32602, "eth_sendRawTransaction takes one 0x-prefixed signed transaction")
        try:
            return self.chain.send_raw_transaction(raw)
        except UndecodableTransaction as exc:  # the sender's bytes: the only "not a signed transaction"
            raise RpcError(-32602, str(exc)) from exc
        except TransactionNotPersisted as exc:
            reason = "disk full" if exc.error.errno == errno.ENOSPC else exc.error.strerror
            raise RpcError(
                NOT_PERSISTED,
                f"transaction not persisted: the node could not journal it ({reason}); "
                "it was not accepted: send it again once the node has disk space",
            ) from exc
        except TransactionFailed as exc:
            raise _revert(exc) from exc
        except (TesterValidationError, EvmValidationError, ValueError) as exc:
            raise RpcError(-32000, f"transaction rejected: {exc}") from exc
        except Exception as exc:  # our failure, not the sender's: logged here, nothing of it in the answer
            log.exception("eth_sendRawTransaction failed")
            raise RpcError(INTERNAL_ERROR, "internal error") from exc

    def _fee_history(self, params: list[Any]) -> Any:
        count = _quantity(params[0], "blockCount") if params else 1
        newest = _block(_arg(params, 1))
        percentiles = _arg(params, 2) or []
        history = self.chain.call("get_fee_history", count, newest, percentiles)
        return to_rpc(history)

    def _logs(self, params: list[Any]) -> Any:
        query = params[0] if params and isinstance(params[0], dict) else {}
        latest = int(self.chain.call("get_block_by_number", "latest")["number"])

        def number(value: Any, default: int) -> int:
            block = _block(value) if value is not None else default
            return latest if isinstance(block, str) else block

        start = number(query.get("fromBlock"), latest)
        end = number(query.get("toBlock"), latest)
        if end - start > MAX_LOG_RANGE:
            raise RpcError(-32005, f"block range too large: at most {MAX_LOG_RANGE} blocks per eth_getLogs")
        with self.chain.lock:  # the filter lives in this tester: keep a rebuild from coming in between
            filter_id = self.chain.call("create_log_filter", start, end, query.get("address"), query.get("topics"))
            try:
                entries = self.chain.call("get_only_filter_changes", filter_id)
            finally:
                self.chain.call("delete_filter", filter_id)
        result = to_rpc(list(entries))
        for entry in result:
            entry.pop("type", None)
            entry["removed"] = False
        return result

    # ------------------------------------------------------------------ requests

    def handle(self, request: Any) -> Any:
        """One request object or a batch (list); returns the response(s), None for notifications only."""
        if isinstance(request, list):
            if not request:
                return _error(None, -32600, "empty batch")
            if len(request) > MAX_BATCH:
                return _error(None, -32600, f"batch too large: at most {MAX_BATCH} requests")
            responses = [r for r in (self._one(item) for item in request) if r is not None]
            return responses or None
        return self._one(request)

    def _one(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error(None, -32600, "invalid request")
        ident = request.get("id")
        method = request["method"]
        params = request.get("params") or []
        handler = self.methods.get(method)
        if handler is None:
            return _error(ident, -32601, f"method {method} is not supported")
        try:
            result = handler(params if isinstance(params, list) else [params])
        except RpcError as exc:
            return _error(ident, exc.code, exc.message, exc.data)
        except (IndexError, TypeError, KeyError) as exc:
            return _error(ident, -32602, f"invalid params for {method}: {exc}")
        except (TesterValidationError, EvmValidationError, ValueError) as exc:
            return _error(ident, -32602, f"invalid params for {method}: {exc}")
        except Exception:  # never let one request take the node down
            log.exception("%s failed", method)
            return _error(ident, INTERNAL_ERROR, "internal error")
        if "id" not in request:
            return None
        return {"jsonrpc": "2.0", "id": ident, "result": result}


def _arg(params: list[Any], index: int) -> Any:
    return params[index] if len(params) > index else None


def _error(ident: Any, code: int, message: str, data: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": ident, "error": error}
