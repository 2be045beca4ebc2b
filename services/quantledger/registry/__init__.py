"""Provenance JSON and on-chain registration of outputs (domain side; no grpc)."""
