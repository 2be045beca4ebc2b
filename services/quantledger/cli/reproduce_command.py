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
import contextlib
import dataclasses
import os
import pathlib
import shutil
import tempfile
import urllib.parse
from typing import Any

from quantledger.cli.render import print_json
from quantledger.errors import QuantizeFailed, SourceNotFound
from quantledger.hashing import sha256_file
from quantledger.registry.provenance import SUFFIX, canonical_bytes, write_provenance
from registry_client.atomic_files import write_atomic


def add_reproduce_parser(actions: Any, add_common: Any) -> None:
    reproduce = actions.add_parser(
        "reproduce", help="redo a recorded output from its provenance and co-attest the same bytes"
    )
    add_common(reproduce)
    reproduce.add_argument("file", metavar="FILE|SHA256", help="the output (hashed here) or its SHA-256")
    reproduce.add_argument("--provenance", default="", help="its provenance JSON (default: FILE.provenance.json)")
    reproduce.add_argument("--source", default="", help="your copy of the source (default: the recorded path)")
    reproduce.add_argument("--lora", default="", help="your copy of the LoRA adapter (default: the recorded path)")
    reproduce.add_argument("--imatrix", default="", help="your copy of the importance matrix (default: recorded)")
    reproduce.add_argument(
        "--out", default="", help="folder for the reproduced file (default: <data dir>/reproductions)"
    )
    reproduce.add_argument("--any-version", action="store_true", help="accept another llama-cpp-python release")
    reproduce.add_argument("--report", action="store_true", help="on different bytes, write a signed mismatch note")
    reproduce.add_argument(
        "--chain-url", default=None, help="JSON-RPC URL (default $QUANTLEDGER_CHAIN_URL, else the chain --server reads)"
    )


def _tupled(value: Any) -> Any:
    """JSON lists back to the tuples the job's options hold."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _staged(source: pathlib.Path, recorded_uri: str, stack: contextlib.ExitStack) -> pathlib.Path:
    """``source`` under the folder name the record's source had: a local Hugging Face folder's name is the
    model's ``general.name`` (and the outputs' stem), so a copy under another name makes other bytes. The
    files a conversion reads are hard-linked (copied across file systems) into a temporary folder."""
    from quantledger.hf.pipeline import needed_files

    recorded_name = pathlib.PurePosixPath(urllib.parse.urlparse(recorded_uri).path).name
    if not source.is_dir() or not recorded_name or source.resolve().name == recorded_name:
        return source.resolve()
    parent = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quantledger-reproduce-")))
    staged = parent / recorded_name
    for relative in needed_files(source):
        target = staged / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / relative, target)
        except OSError:
            shutil.copyfile(source / relative, target)
    return staged


def _run_job(spec: Any) -> Any:
    from quantledger.config import Settings
    from quantledger.jobs.engine import JobEngine
    from quantledger.jobs.store import SqliteJobStore

    async def run() -> Any:
        settings = dataclasses.replace(Settings.from_env(), allowed_roots=(pathlib.Path("/"),), chain_url="")
        engine = JobEngine(settings, SqliteJobStore(":memory:"))
        await engine.start()
        try:
            job = await engine.create(spec)
            async for snapshot in engine.watch(job.id):
                job = snapshot
            return job
        finally:
            await engine.shutdown()

    return asyncio.run(run())


def cmd_reproduce(args: argparse.Namespace, client: Any, digest_of: Any) -> int:
    from quantledger.convert.lora import load_lora
    from quantledger.jobs.model import JobSpec, Options
    from quantledger.registry.reproduce import (
        check_digest,
        check_tool_version,
        first_difference,
        mismatch_note,
        original_record,
        read_provenance,
        recorded_job,
        signed,
        source_digest,
    )
    from registry_client.records import Flag, Registration

    sha = digest_of(args.file)
    if not args.provenance and not pathlib.Path(args.file).is_file():
        raise SourceNotFound("a SHA-256 alone needs --provenance: the provenance JSON of that output", path=args.file)
    provenance_path = pathlib.Path(args.provenance or args.file + SUFFIX)
    provenance_sha, statement = read_provenance(provenance_path)
    record = original_record(client.records_of(sha), provenance_sha)
    recorded = recorded_job(statement)
    tool = check_tool_version(record, args.any_version)
    source = pathlib.Path(args.source or recorded.source_uri.removeprefix("file://"))
    if not source.exists():
        raise SourceNotFound(f"the source {source} is not here: pass --source with your copy", path=str(source))
    check_digest("the source", source, source_digest(source), record.source_digest)
    options = {k: _tupled(v) for k, v in recorded.options.items() if k in {f.name for f in dataclasses.fields(Options)}}
    if recorded.lora_sha256:
        lora = pathlib.Path(args.lora or options.get("lora_dir", ""))
        check_digest("the LoRA adapter", lora, load_lora(lora).sha256, recorded.lora_sha256)
        options["lora_dir"] = str(lora.resolve())
    if recorded.imatrix_sha256 and not recorded.imatrix_computed:
        imatrix = pathlib.Path(args.imatrix or options.get("imatrix_path", ""))
        check_digest("the importance matrix", imatrix, sha256_file(imatrix), recorded.imatrix_sha256)
        options["imatrix_path"] = str(imatrix.resolve())
    options.update(overwrite=True, skip_quality=True, output_dir="")  # default: the engine's, in the data dir
    if args.out:
        out = pathlib.Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        options["output_dir"] = str(out)
    with contextlib.ExitStack() as stack:
        staged = _staged(source, recorded.source_uri, stack)
        spec = JobSpec(source=str(staged), quant_types=(recorded.quant_type,), options=Options(**options))
        job = _run_job(spec)
    if job.state.value != "SUCCEEDED" or not job.outputs:
        raise QuantizeFailed(f"the reproduction job ended {job.state.value}: {job.error.message if job.error else ''}")
    output = job.outputs[0]
    answer: dict[str, Any] = {
        "file_sha256": sha,
        "reproduced_sha256": output.sha256,
        "reproduced_path": output.path,
        "original_attester": record.attester,
        "tool_version": tool,
    }
    if output.sha256 == sha:
        reproduction = {
            "_type": statement["_type"],
            "subject": statement["subject"],
            "predicateType": statement["predicateType"],
            "predicate": {
                **statement["predicate"],
                "reproducedFrom": {
                    "attester": record.attester,
                    "provenanceSha256": record.provenance_sha256,
                    "tool": tool,
                    "anyVersion": bool(args.any_version and tool != record.tool_version),
                },
            },
        }
        path, provenance_digest = write_provenance(output.path, reproduction)
        result = client.register(
            Registration(
                file_sha256=sha, source_digest=record.source_digest, provenance_sha256=provenance_digest,
                quant_type=record.quant_type, tool_version=tool, file_type=record.file_type,
                original_size=record.original_size, quantized_size=record.quantized_size,
                source_revision=record.source_revision, flags=record.flags | Flag.REPRODUCED,
            )
        )  # fmt: skip
        answer.update(
            verdict="REPRODUCED",
            attester=client.attester,
            transaction=result.transaction,
            provenance_path=path,
            attestation_count=client.attestation_count(sha),
        )
    else:
        answer.update(
            verdict="DIFFERENT",
            first_difference=first_difference(pathlib.Path(output.path), pathlib.Path(args.file))
            if pathlib.Path(args.file).is_file()
            else {},
        )
        if args.report:
            note = signed(mismatch_note(record, output.sha256, answer["first_difference"], tool), client.account)
            note_path = output.path + ".mismatch.json"  # beside the reproduced file
            write_atomic(pathlib.Path(note_path), canonical_bytes(note))
            answer["report"] = note_path
    if args.json:
        print_json(answer)
    else:
        print(f"{args.file}: {answer['verdict']} (sha256 {output.sha256})")
        if answer["verdict"] == "REPRODUCED":
            print(
                f"  registered by {answer['attester']} in {answer['transaction']}; "
                f"{answer['attestation_count']} attesters"
            )
        else:
            print(f"  first difference: {answer['first_difference']}")
    return 0 if answer["verdict"] == "REPRODUCED" else 1
