"""``quantledger registry reproduce FILE|SHA256``: redo a recorded GGUF output from its provenance JSON alone
and, with the same bytes, co-attest it from this home's own key (docs/REPRODUCE.md, docs/REGISTRY.md "Trust").
Hugging Face format folders are not reproduced: their bytes depend on the torch and transformers releases,
which their provenance does not pin.

The checks come first (registry/reproduce.py): provenance digest, tool version, source, LoRA and
importance-matrix digests; then the job runs in this process on the ordinary engine (as `quantledger
quantize` does), with the recorded quant type and options, into ``--out``. Same SHA-256: a record of the
file with the REPRODUCED flag, whose provenance (written beside the reproduced file) names the original
record. Different bytes: where they first differ, nothing registered, and with ``--report`` a mismatch note
signed by this home's key.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
from typing import Any

from quantledger.cli.render import print_json
from quantledger.errors import QuantizeFailed, SourceNotFound
from quantledger.registry.provenance import SUFFIX, tool_version


def add_reproduce_parser(actions: Any, add_common: Any) -> None:
    reproduce = actions.add_parser(
        "reproduce", help="redo a recorded output from its provenance and co-attest the same bytes"
    )
    add_common(reproduce)
    reproduce.add_argument("file", metavar="FILE|SHA256", help="the output (hashed here) or its SHA-256")
    reproduce.add_argument(
        "--provenance",
        default="",
        help="its provenance JSON: a path, an http(s) URL, or jobs/ID (the job on --server that made it); "
        "default: FILE.provenance.json",
    )
    reproduce.add_argument("--source", default="", help="your copy of the source (default: the recorded path)")
    reproduce.add_argument("--lora", default="", help="your copy of the LoRA adapter (default: the recorded path)")
    reproduce.add_argument("--imatrix", default="", help="your copy of the importance matrix (default: recorded)")
    reproduce.add_argument(
        "--out", default="", help="folder for the reproduced file (default: <data dir>/artifacts/<job id>)"
    )
    reproduce.add_argument("--any-version", action="store_true", help="accept another llama-cpp-python release")
    reproduce.add_argument("--report", action="store_true", help="on different bytes, write a signed mismatch note")
    reproduce.add_argument(
        "--chain-url", default=None, help="JSON-RPC URL (default $QUANTLEDGER_CHAIN_URL, else the chain --server reads)"
    )


def _run_job(spec: Any, client: Any, url: str) -> Any:
    """``spec`` on an in-process engine whose registrar signs with ``client``'s key on its registry."""
    from quantledger.config import Settings
    from quantledger.jobs.engine import JobEngine
    from quantledger.jobs.store import SqliteJobStore
    from quantledger.registry.registrar import Registrar
    from registry_client.address_book import AddressBook

    async def run() -> Any:
        settings = dataclasses.replace(Settings.from_env(), allowed_roots=(pathlib.Path("/"),), chain_url=url)
        registrar = Registrar(url, client.account, AddressBook.in_home(settings.home), address=client.address)
        engine = JobEngine(settings, SqliteJobStore(":memory:"), registrar)
        await engine.start()
        try:
            job = await engine.create(spec)
            async for snapshot in engine.watch(job.id):
                job = snapshot
            return job
        finally:
            await engine.shutdown()

    return asyncio.run(run())


def _optional_path(value: str) -> pathlib.Path | None:
    return pathlib.Path(value).resolve() if value else None


def cmd_reproduce(args: argparse.Namespace, client: Any, url: str, digest_of: Any) -> int:
    from quantledger.registry.reproduce import ReproductionInputs, plan_reproduction

    sha = digest_of(args.file)
    if not args.provenance and not pathlib.Path(args.file).is_file():
        raise SourceNotFound("a SHA-256 alone needs --provenance: the provenance JSON of that output", path=args.file)
    location = args.provenance or args.file + SUFFIX
    if location.startswith("jobs/"):
        location = _job_provenance(args, location, sha)
    provenance = _read_provenance(location)
    out = str(pathlib.Path(args.out).resolve()) if args.out else ""
    inputs = ReproductionInputs(
        source=_optional_path(args.source),
        lora=_optional_path(args.lora),
        imatrix=_optional_path(args.imatrix),
        any_version=args.any_version,
        report=args.report,
        original_path=str(pathlib.Path(args.file).resolve()) if pathlib.Path(args.file).is_file() else "",
        output_dir=out,
    )
    spec = plan_reproduction(provenance, client.records_of(sha), inputs)  # every check, before any work
    if out:
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    job = _run_job(spec, client, url)
    if job.error is not None:  # raised again with its own reason (SOURCE_MISMATCH of a hub download, …)
        from quantledger.quantize.runner import error_for_reason

        message = f"the reproduction job failed: {job.error.message}"
        raise error_for_reason(job.error.reason, message, **job.error.metadata)
    if job.state.value != "SUCCEEDED" or not job.outputs or job.reproduced is None:
        raise QuantizeFailed(f"the reproduction job ended {job.state.value} without a verdict")
    output, verdict = job.outputs[0], job.reproduced
    answer: dict[str, Any] = {
        "file_sha256": sha,
        "verdict": verdict.verdict,
        "reproduced_sha256": verdict.reproduced_sha256,
        "reproduced_path": output.path,
        "original_attester": job.spec.reproduction.original_attester if job.spec.reproduction else "",
        "tool_version": tool_version(),
    }
    entry = output.registry
    if verdict.verdict == "REPRODUCED":
        if entry is None or entry.state != "REGISTERED":
            error = entry.error.message if entry is not None and entry.error else "no registry entry"
            raise QuantizeFailed(f"the same bytes were made, but their record was not registered: {error}")
        answer.update(
            attester=entry.attester,
            transaction=entry.tx_hash,
            provenance_path=entry.provenance_path,
            attestation_count=client.attestation_count(sha),
        )
    else:
        answer["first_difference"] = verdict.first_difference
        if verdict.report_path:
            answer["report"] = verdict.report_path
    if args.json:
        print_json(answer)
    else:
        print(f"{args.file}: {answer['verdict']} (sha256 {verdict.reproduced_sha256})")
        if answer["verdict"] == "REPRODUCED":
            print(
                f"  registered by {answer['attester']} in {answer['transaction']}; "
                f"{answer['attestation_count']} attesters"
            )
        else:
            print(f"  first difference: {answer['first_difference']}")
    return 0 if answer["verdict"] == "REPRODUCED" else 1


def _job_provenance(args: argparse.Namespace, name: str, sha: str) -> str:
    """Where the job ``name`` on ``--server`` wrote the provenance of its output ``sha``: a path, or an
    ``s3://`` object of the distributed backend's artifact store."""
    from quantledger.cli.channels import open_channel
    from quantledger.v1 import quantize_service_pb2 as qpb
    from quantledger.v1 import quantize_service_pb2_grpc as qpb_grpc

    job = qpb_grpc.QuantizeServiceStub(open_channel(args)).GetQuantizeJob(qpb.GetQuantizeJobRequest(name=name))
    for output in job.outputs:
        if sha in {output.sha256, *(f.sha256 for f in output.files)} and output.registry.provenance_path:
            return str(output.registry.provenance_path)
    raise SourceNotFound(f"{name} made no output with SHA-256 {sha} that has a provenance JSON", path=name)


def _read_provenance(location: str) -> bytes:
    """The provenance JSON's bytes: a file, or an http(s) URL (read here, by the reproducer)."""
    from quantledger.registry.reproduce import MAX_PROVENANCE_BYTES, read_provenance

    if location.startswith("s3://"):
        from quantledger.artifacts.store import ArtifactStore

        bucket, _, key = location.removeprefix("s3://").partition("/")
        return ArtifactStore.from_uri(f"s3://{bucket}").get_bytes(key, MAX_PROVENANCE_BYTES)
    if location.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(location, timeout=60) as response:
                return bytes(response.read(MAX_PROVENANCE_BYTES + 1))
        except OSError as exc:
            raise SourceNotFound(f"{location}: the provenance JSON could not be fetched: {exc}", path=location) from exc
    return read_provenance(location)
