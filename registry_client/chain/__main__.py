"""python -m registry_client.chain --data-dir D [--host H] [--port P] --fund 0xADDR [--fund ...]
[--rpc-gas-cap GAS] [--rpc-call-timeout SECONDS]"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib

from registry_client.chain.rpc import DEFAULT_CALL_TIMEOUT, DEFAULT_GAS_CAP
from registry_client.chain.server import serve_chain


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m registry_client.chain")
    parser.add_argument("--data-dir", required=True, type=pathlib.Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8545)
    parser.add_argument("--fund", action="append", default=[], help="address funded at genesis")
    parser.add_argument(
        "--rpc-gas-cap",
        type=int,
        default=DEFAULT_GAS_CAP,
        help="most gas an eth_call / eth_estimateGas gets (default %(default)s)",
    )
    parser.add_argument(
        "--rpc-call-timeout",
        type=float,
        default=DEFAULT_CALL_TIMEOUT,
        help="seconds an eth_call / eth_estimateGas may run (default %(default)s)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_chain(
        args.data_dir,
        args.host,
        args.port,
        args.fund,
        on_ready=lambda url: print(json.dumps({"url": url}), flush=True),
        gas_cap=args.rpc_gas_cap,
        call_timeout=args.rpc_call_timeout,
    )


if __name__ == "__main__":
    main()
