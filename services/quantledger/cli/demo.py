"""``quantledger demo``: the whole pipeline on a model it makes itself, step by step.

It uses its own data dir (``$QUANTLEDGER_HOME/demo``), its own embedded chain and its own gRPC server
on free loopback ports, so it never disturbs a running ``quantledger up``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import signal
import socket
import sys
import threading
import time
from typing import Any

import grpc

from quantledger.cli.channels import ClientTransport
from quantledger.cli.render import ProgressBar, human_bytes, print_job, to_json
from quantledger.cli.services import start_embedded_chain
from quantledger.config import Settings
from quantledger.hashing import sha256_file
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc
from quantledger.v1 import registry_service_pb2 as registry_pb
from quantledger.v1 import registry_service_pb2_grpc as registry_pb_grpc
from registry_client.address_book import AddressBook
from registry_client.client import RegistryClient
from registry_client.keys import load_or_create_key

DEMO_TYPES = ("Q4_K_M", "Q8_0")
HASH_MATCH = "sha256 and predicted size match"  # the output re-hashed here against the job's SHA-256
RECOMMEND_MATCH = "predicted size matches, quality measured"  # what the recommender's answer is checked for


class _BackgroundServer:
    """A QuantledgerServer on its own event loop thread."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._server: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="demo-server", daemon=True)
        self.port = 0
        self._failure: BaseException | None = None

    def _main(self) -> None:
        from quantledger.grpc_api.server import QuantledgerServer

        asyncio.set_event_loop(self._loop)
        try:
            # grpc.aio binds a server to the loop current when it is made: make it on this thread's loop
            self._server = QuantledgerServer(self._settings)
            self.port = self._loop.run_until_complete(self._server.start())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_until_complete(self._server.wait())

    def __enter__(self) -> _BackgroundServer:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(timeout=30)
        self._thread.join(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_demo(*, json_output: bool) -> int:
    from quantledger.testing.synthetic_model import write_llama_gguf

    base = Settings.from_env()
    home = base.home / "demo"
    # a private plaintext server on loopback, whatever TLS the environment configures for `up`
    settings = dataclasses.replace(
        base, home=home, allowed_roots=(home,), host="127.0.0.1", port=0, tls_cert="", tls_key="", tls_client_ca=""
    )
    settings.ensure_dirs()
    report: dict[str, Any] = {"data_dir": str(home), "steps": []}

    def step(title: str, detail: dict[str, Any]) -> None:
        report["steps"].append({"step": title, **detail})
        if not json_output:
            print(f"\n== {title}")
            for key, value in detail.items():
                print(f"   {key}: {value}")

    model = home / "models" / "demo-llama-f16.gguf"
    model.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    written = write_llama_gguf(
        model,
        n_embd=512,
        n_ff=1536,
        n_layer=4,
        n_head=8,
        n_head_kv=4,
        n_vocab=512,
        seed=7,
        name="quantledger-demo",
    )
    step(
        "1. made a small llama-shaped F16 model with random weights",
        {"path": str(model), "bytes": written, "seconds": round(time.monotonic() - started, 2)},
    )

    settings = dataclasses.replace(settings, chain_port=_free_port())
    account = load_or_create_key(settings.admin_key_path)
    chain = start_embedded_chain(settings)
    try:
        registry = RegistryClient.ensure_deployed(settings.embedded_chain_url, account, AddressBook.in_home(home))
        settings = dataclasses.replace(settings, chain_url=settings.embedded_chain_url)
        step(
            "2. started the embedded chain (eth-tester behind JSON-RPC) and deployed the registry",
            {
                "chain": settings.chain_url,
                "chain id": registry.chain_id,
                "registry": registry.address,
                "attester": account.address,
            },
        )
        return _run_jobs(settings, model, step, report, json_output=json_output)
    finally:
        chain.send_signal(signal.SIGTERM)
        chain.wait(timeout=30)


def _recommend_step(channel: grpc.Channel, model: pathlib.Path, final: pb.QuantizeJob, step: Any) -> dict[str, str]:
    """Ask the RecommendService about the demo model on this machine; check it against the real outputs."""
    import os

    from quantledger.v1 import recommend_service_pb2 as rpb
    from quantledger.v1 import recommend_service_pb2_grpc as rpb_grpc

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    request = rpb.RecommendRequest(
        model=rpb.ModelSpec(gguf_path=str(model)),
        hardware=rpb.Hardware(ram_bytes=ram, cores=os.cpu_count() or 1),
        context_length=4096,
        max_options=40,
    )
    answer = rpb_grpc.RecommendServiceStub(channel).Recommend(request)
    options = {o.quant_type: o for o in answer.options}
    best = answer.options[0]
    detail = {
        "machine": answer.hardware_summary,
        "recommended": f"{best.quant_type}: {human_bytes(best.size_bytes)}, {best.tokens_per_second:.0f} tokens/s, "
        f"KL divergence {best.quality.mean_kl_divergence:.4f} ({best.quality.source})",
    }
    checks = {}
    for artifact in final.outputs:
        option = options[artifact.quant_type]
        same = option.size_bytes == artifact.size_bytes and option.quality.source == "measured"
        detail[artifact.quant_type] = (
            f"predicted {option.size_bytes:,} bytes (real {artifact.size_bytes:,}), quality {option.quality.source}"
        )
        # the recommender knows sizes and quality, not hashes: say what is compared
        checks[f"{artifact.quant_type} recommendation"] = RECOMMEND_MATCH if same else "MISMATCH"
    step("10. asked the RecommendService which type fits this machine (sizes from llama.cpp's own rules)", detail)
    return checks


def _run_jobs(settings: Settings, model: pathlib.Path, step: Any, report: dict[str, Any], *, json_output: bool) -> int:
    with _BackgroundServer(settings) as server:
        channel = ClientTransport().open(f"127.0.0.1:{server.port}")
        stub = pb_grpc.QuantizeServiceStub(channel)
        step(
            "3. started the quantize, recommend and registry services",
            {"address": f"127.0.0.1:{server.port}", "health": "SERVING"},
        )

        types = stub.ListQuantTypes(pb.ListQuantTypesRequest())
        step(
            "4. asked llama.cpp which types it offers",
            {
                "count": len(types.quant_types),
                "types": " ".join(t.name for t in types.quant_types),
                "llama.cpp": types.llama_cpp_build,
                "binding": types.llama_cpp_version,
            },
        )

        request = pb.QuantizeJob(source=str(model), quant_types=list(DEMO_TYPES))
        estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=request))
        predicted = {o.quant_type: f"{o.size_bytes:,} bytes, {o.bits_per_weight:.3f} BPW" for o in estimate.outputs}
        needed, free = human_bytes(estimate.disk_bytes_needed), human_bytes(estimate.disk_bytes_free)
        step("5. estimated the job with llama.cpp's dry run", {**predicted, "disk": f"needs {needed} of {free} free"})

        job = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=request, request_id=f"demo-{time.time_ns()}"))
        bar = None if json_output else ProgressBar()
        if not json_output:
            print(f"\n== 6. submitted {job.name}; watching it")
        final = job
        for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name)):
            final = snapshot
            if bar is not None:
                bar.update(snapshot)
        if bar is not None:
            bar.close()
            print_job(final)
        report["job"] = to_json(final)
        if final.state != pb.QuantizeJob.STATE_SUCCEEDED:
            print(
                f"error: demo job ended {pb.QuantizeJob.State.Name(final.state)}: {final.error.message}",
                file=sys.stderr,
            )
            if json_output:
                print(json.dumps(report))
            return 1

        checks = {}
        for artifact in final.outputs:
            predicted = next(o.size_bytes for o in estimate.outputs if o.quant_type == artifact.quant_type)
            ok = sha256_file(artifact.path) == artifact.sha256 and predicted == artifact.size_bytes
            checks[artifact.quant_type] = HASH_MATCH if ok else "MISMATCH"
        step("7. re-hashed every output and compared sizes with the estimate", checks)

        registry_stub = registry_pb_grpc.RegistryServiceStub(channel)
        verdicts = {}
        for artifact in final.outputs:
            answer = registry_stub.VerifyDigest(
                registry_pb.VerifyDigestRequest(file_sha256=artifact.sha256, size_bytes=artifact.size_bytes)
            )
            verdict = registry_pb.VerifyDigestResponse.Verdict.Name(answer.verdict).removeprefix("VERDICT_")
            where = f"tx {artifact.registry.tx_hash}" if artifact.registry.tx_hash else "recorded by an earlier run"
            verdicts[artifact.quant_type] = f"{verdict} on chain ({where})"
            checks[artifact.quant_type] = checks[artifact.quant_type] if verdict == "VALID" else "NOT ON CHAIN"
        step("8. asked the registry who vouches for each output", verdicts)

        import llama_cpp

        smallest = min(final.outputs, key=lambda a: a.size_bytes)
        llm = llama_cpp.Llama(model_path=smallest.path, n_ctx=64, verbose=False)
        tokens = llm.tokenize(b"hello world")
        completion: Any = llm.create_completion("hello world", max_tokens=8, temperature=0.0)
        step(
            f"9. loaded {smallest.quant_type} in llama.cpp and generated",
            {
                "prompt tokens": len(tokens),
                "generated": repr(completion["choices"][0]["text"]),
                "note": "random weights: the text is noise",
            },
        )
        del llm
        checks.update(_recommend_step(channel, model, final, step))
        failed = any(v not in (HASH_MATCH, RECOMMEND_MATCH) for v in checks.values())
    if json_output:
        print(json.dumps(report))
    else:
        print("\nDemo finished: next, `quantledger up`, `quantledger submit MODEL.gguf --quant Q4_K_M --wait`")
        print("and `quantledger registry verify OUTPUT.gguf`.")
    return 1 if failed else 0
