"""Generated Python stubs of the quantledger.v1 API (run protos/generate.py; do not edit)."""
