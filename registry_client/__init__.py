"""Web3 client for the QuantizedModelRegistry contract (arrives with the registry issue).

This package is importable today so that the layout of DESIGN.md holds; it has no API yet.
"""
