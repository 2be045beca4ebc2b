"""``quantledger registry list|show|verify|revoke``.

Reads go to the RegistryService of ``--server`` (so they work from any machine without an Ethereum
library); ``verify FILE`` hashes the file here and asks the server about its digest and size, then checks
the GGUF header's file type against each record. ``revoke`` signs a transaction, so it talks to the
chain directly with the caller's key (``QUANTLEDGER_CHAIN_KEY`` / ``_FILE``, else the data dir's key):
the chain of ``--chain-url`` (or ``QUANTLEDGER_CHAIN_URL``), else the chain and contract that the
RegistryService of ``--server`` reads (GetRegistryInfo), so a revoke lands where the records are.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
from typing import Any

from quantledger.cli.channels import open_channel
from quantledger.cli.render import human_bytes, print_json, to_json
from quantledger.cli.reproduce_command import add_reproduce_parser
from quantledger.config import Settings
from quantledger.errors import SourceNotFound
from quantledger.gguf.reader import read_gguf_header
from quantledger.hashing import sha256_file
from quantledger.hf.manifest import build_manifest, folder_files
from quantledger.v1 import registry_service_pb2 as pb
from quantledger.v1 import registry_service_pb2_grpc as pb_grpc

VERDICT_EXIT = {"VERDICT_VALID": 0}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def add_registry_parser(commands: Any, add_common: Any) -> None:
    registry = commands.add_parser("registry", help="read, verify and revoke provenance records")
    actions = registry.add_subparsers(dest="registry_command", required=True)
    listing = actions.add_parser("list", help="records of a file or of a source")
    add_common(listing)
    target = listing.add_mutually_exclusive_group(required=True)
    target.add_argument("--file", help="SHA-256 of a file")
    target.add_argument("--source", help="root digest of a source model")
    listing.add_argument("--page-size", type=int, default=0)
    listing.add_argument("--page-token", default="")
    show = actions.add_parser("show", help="one record: files/{sha256}/records/{attester}, or SHA --attester A")
    add_common(show)
    show.add_argument("record", help="record name, or a file SHA-256 with --attester")
    show.add_argument("--attester", default="", help="attester address (with a SHA-256)")
    verify = actions.add_parser("verify", help="hash a local file and ask who vouches for it")
    add_common(verify)
    verify.add_argument("file", help="a GGUF file, a Hugging Face output folder, or an output's s3://BUCKET/KEY")
    verify.add_argument("--attester", default="", help="only this attester's record counts")
    verify.add_argument(
        "--min-attesters",
        type=int,
        default=0,
        metavar="K",
        help="VALID only when K independent, non-revoked attesters vouch for these bytes",
    )
    add_reproduce_parser(actions, add_common)
    revoke = actions.add_parser("revoke", help="revoke your own record of a file (signs a transaction)")
    add_common(revoke)
    revoke.add_argument("target", metavar="FILE|SHA256", help="the file (hashed here) or its SHA-256")
    revoke.add_argument("--reason", required=True, help="why, in plain words (kept on chain)")
    revoke.add_argument(
        "--chain-url", default=None, help="JSON-RPC URL (default $QUANTLEDGER_CHAIN_URL, else the chain --server reads)"
    )


def _stub(args: argparse.Namespace) -> pb_grpc.RegistryServiceStub:
    return pb_grpc.RegistryServiceStub(open_channel(args))


def _print_record(record: pb.ProvenanceRecord) -> None:
    status = pb.ProvenanceRecord.Status.Name(record.status).removeprefix("STATUS_")
    print(f"{record.name}  {status}")
    print(
        f"  {record.quant_type} (file type {record.file_type}), {human_bytes(record.quantized_size_bytes)} "
        f"from {human_bytes(record.original_size_bytes)}: {record.compression_ratio:.2f}x smaller"
    )
    revision = f" @ {record.source_revision}" if record.source_revision else ""
    print(f"  source {record.source_digest}{revision}")
    print(f"  provenance {record.provenance_sha256}  tool {record.tool_version}")
    if record.flags:
        print(f"  flags {', '.join(record.flags)}")
    print(f"  attested {record.attest_time.ToJsonString()}", end="")
    print(f", revoked {record.revoke_time.ToJsonString()}" if record.HasField("revoke_time") else "")


def cmd_registry(args: argparse.Namespace) -> int:
    action = args.registry_command
    if action == "list":
        parent = f"files/{args.file}" if args.file else f"sources/{args.source}"
        response = _stub(args).ListRecords(
            pb.ListRecordsRequest(parent=parent, page_size=args.page_size, page_token=args.page_token)
        )
        if args.json:
            print_json(to_json(response))
        else:
            for record in response.records:
                _print_record(record)
            if not response.records:
                print(f"no records under {parent}")
            if response.next_page_token:
                print(f"more: --page-token {response.next_page_token}")
        return 0
    if action == "show":
        name = args.record
        if args.attester:
            name = f"files/{args.record}/records/{args.attester}"
        record = _stub(args).GetRecord(pb.GetRecordRequest(name=name))
        if args.json:
            print_json(to_json(record))
        else:
            _print_record(record)
        return 0
    if action == "verify":
        return _verify(args)
    if action == "reproduce":
        from quantledger.cli.reproduce_command import cmd_reproduce

        return cmd_reproduce(args, *_writing_client(args), _revoke_target)
    return _revoke(args)


def _verify(args: argparse.Namespace) -> int:
    if args.file.startswith("s3://"):
        return _verify_object(args)
    if pathlib.Path(args.file).is_dir():  # a Hugging Face format's folder: its manifest's root digest
        manifest = build_manifest(pathlib.Path(args.file), folder_files(pathlib.Path(args.file)))
        return _verify_digest(args, sum(f.size_bytes for f in manifest.files), None, manifest.root_digest)
    header = read_gguf_header(args.file)  # refuses a non-GGUF file before hashing it
    digest = sha256_file(args.file)
    return _verify_digest(args, header.file_size, header.file_type, digest)


def _verify_object(args: argparse.Namespace) -> int:
    """An output in an S3 artifact store (its ``s3://`` URI): downloaded to a temporary file (hashed on the
    way, credentials from the standard AWS chain), checked like a local file, then removed."""
    import tempfile

    from quantledger.artifacts.store import ArtifactStore

    bucket_uri, _, key = args.file.removeprefix("s3://").partition("/")
    store = ArtifactStore.from_uri(f"s3://{bucket_uri}")
    with tempfile.TemporaryDirectory(prefix="quantledger-verify-") as folder:
        local = pathlib.Path(folder) / pathlib.PurePosixPath(key).name
        stored = store.get_file(key, local, expected_sha256=None)
        header = read_gguf_header(str(local))
        return _verify_digest(args, header.file_size, header.file_type, stored.sha256)


def _verify_digest(args: argparse.Namespace, size: int, file_type: int | None, digest: str) -> int:
    """Ask the registry about ``digest``: its records must agree with ``size`` and (a GGUF's) ``file_type``."""
    request = pb.VerifyDigestRequest(
        file_sha256=digest, attester=args.attester, size_bytes=size, min_attesters=args.min_attesters
    )
    response = _stub(args).VerifyDigest(request)
    verdict = pb.VerifyDigestResponse.Verdict.Name(response.verdict)
    problems = [
        f"{r.attester} recorded file type {r.file_type}; the header says {file_type}"
        for r in response.valid_records
        if file_type is not None and r.file_type != file_type
    ]
    if problems and len(problems) == len(response.valid_records):
        verdict = "VERDICT_MISMATCH"
    if args.json:
        print_json(
            {
                "file": args.file,
                "sha256": digest,
                "verdict": verdict,
                "problems": problems,
                "response": to_json(response),
            }
        )
    else:
        print(f"{args.file}: {verdict.removeprefix('VERDICT_')} (sha256 {digest})")
        for record in response.valid_records:
            print(f"  vouched for by {record.attester}: {record.quant_type} of source {record.source_digest[:16]}…")
        if args.min_attesters > 1:
            roles = ", ".join(
                f"{v.attester} ({'reproduced' if v.reproduced else 'originated'})" for v in response.vouches
            )
            print(f"  {len(response.vouches)} of {args.min_attesters} attesters asked for: {roles or 'none'}")
        for record in response.revoked_records:
            print(f"  revoked by {record.attester} at {record.revoke_time.ToJsonString()}")
        for problem in problems:
            print(f"  problem: {problem}", file=sys.stderr)
        print(f"  (chain {response.chain_id}, registry {response.contract})")
    return VERDICT_EXIT.get(verdict, 1)


def _revoke_target(target: str) -> str:
    """The SHA-256 to revoke: an existing file's (hashed here), else the argument as a digest."""
    if os.path.isfile(target):
        return sha256_file(target)
    digest = target.lower().removeprefix("0x")
    if not _SHA256.fullmatch(digest):
        raise SourceNotFound(f"{target!r} is neither a file nor a SHA-256 (64 hex characters)", path=target)
    return digest


def _writing_client(args: argparse.Namespace) -> tuple[Any, str]:
    """A registry client that signs with this home's key (QUANTLEDGER_CHAIN_KEY…, else the data dir's), on
    ``--chain-url`` / $QUANTLEDGER_CHAIN_URL, else on the chain and contract the ``--server`` reads; and
    that chain's URL."""
    from quantledger.registry.wiring import signing_account
    from registry_client.address_book import AddressBook
    from registry_client.client import RegistryClient

    settings = Settings.from_env(chain_url=args.chain_url)
    url, address = settings.chain_url, settings.registry_address
    if not url:  # the chain the server reads, not a default that may be another one
        info = _stub(args).GetRegistryInfo(pb.GetRegistryInfoRequest(), timeout=60)
        url, address = info.chain_url, address or info.contract
    client = RegistryClient.connect(
        url,
        address=address or None,
        account=signing_account(settings),
        address_book=AddressBook.in_home(settings.home),
    )
    return client, url


def _revoke(args: argparse.Namespace) -> int:
    digest = _revoke_target(args.target)
    client, url = _writing_client(args)
    result = client.revoke(digest, args.reason)
    if args.json:
        print_json(
            {
                "revoked": digest,
                "attester": client.attester,
                "transaction": result.transaction,
                "blockNumber": result.block_number,
                "chain_url": url,
                "contract": client.address,
            }
        )
    else:
        print(f"revoked {digest} for {client.attester} in {result.transaction} (block {result.block_number}, {url})")
    return 0
