"""The embedded chain: eth-tester (py-evm) behind Ethereum JSON-RPC, durable across kill -9."""

from registry_client.chain.journal import ChainJournalCorrupt
from registry_client.chain.node import EmbeddedChain
from registry_client.chain.rpc import RpcDispatcher
from registry_client.chain.server import serve_chain

__all__ = ["ChainJournalCorrupt", "EmbeddedChain", "RpcDispatcher", "serve_chain"]
