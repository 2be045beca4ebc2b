"""GGUF files: the one reader, type table, layout computation and writer of the service.

- :mod:`~quantledger.gguf.format`: the format's constants (magic, versions, value types, alignment);
- :mod:`~quantledger.gguf.types`: the ggml tensor types of the installed libggml (block sizes);
- :mod:`~quantledger.gguf.reader`: the bounded, hostile-safe header parser (``read_gguf_header``);
- :mod:`~quantledger.gguf.layout`: tensor sizes and the exact size of a quantized output;
- :mod:`~quantledger.gguf.writer`: the writer every GGUF the service and its tests make goes through.
"""
