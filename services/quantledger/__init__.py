"""quantledger: llama.cpp GGUF quantization as a service, with on-chain provenance."""

__version__ = "0.1.0"
