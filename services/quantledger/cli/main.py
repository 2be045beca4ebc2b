"""The ``quantledger`` command line.

Every command takes ``--json`` (the proto JSON mapping with proto field names; ``watch`` prints JSON
lines), ``--server HOST:PORT``, ``--token-file PATH`` (else ``$QUANTLEDGER_TOKEN``: the API token sent on
every call, never printed) and the client's transport flags (``--tls-ca``, ``--tls-cert``/``--tls-key``,
``--insecure``: ``cli/channels.py``), before or after the command. Exit status: 0 on success, 1 on a
failure (the error reason is printed), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Callable, Iterator

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quantledger import __version__
from quantledger.cli.arguments import in_flag_terms, local_path, names_hub_model
from quantledger.cli.channels import ClientTransport, add_transport_flags, open_channel, unavailable_message
from quantledger.cli.imatrix_command import add_imatrix_parser, cmd_imatrix
from quantledger.cli.recommend_command import add_recommend_parser, cmd_recommend
from quantledger.cli.registry_commands import add_registry_parser, cmd_registry
from quantledger.cli.render import ProgressBar, error_reason, print_job, print_json, state_name, to_json
from quantledger.cli.reproducer_command import add_reproducer_flags, cmd_reproducer
from quantledger.cli.tokens_command import add_tokens_parser, cmd_tokens
from quantledger.config import AUTH_MODES, BACKENDS, DEFAULT_PORT, Settings, parse_duration
from quantledger.errors import QuantledgerError
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

SIGPIPE_EXIT = 128 + signal.SIGPIPE  # what a shell reports for a tool that a closed pipe stopped


class CommandFailed(Exception):
    """A command failed with a reason; printed by main()."""

    def __init__(self, reason: str, message: str, code: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


# ------------------------------------------------------------------ arguments


def _server_default() -> str:
    return os.environ.get("QUANTLEDGER_SERVER", f"127.0.0.1:{DEFAULT_PORT}")


def _add_common(parser: argparse.ArgumentParser, *, top: bool = False, client: bool = True) -> None:
    """``--json``, ``--server`` and (for a ``client`` command) the transport flags, before the command
    (``top``) or after it; after wins."""
    unset = None if top else argparse.SUPPRESS  # a command's own flag, when not given, keeps the top one
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print JSON (proto field names)",
    )
    parser.add_argument(
        "--server",
        default=unset,
        help="HOST:PORT of the gRPC server (default $QUANTLEDGER_SERVER or 127.0.0.1:50051)",
    )
    if client:
        parser.add_argument(
            "--token-file",
            default=unset,
            metavar="PATH",
            help="file holding the API token sent on every call (default $QUANTLEDGER_TOKEN)",
        )
        add_transport_flags(parser, top=top)


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="gRPC port (default 50051)")
    parser.add_argument(
        "--http-port", type=int, default=None, help="HTTP/JSON API port on the same host (default 8080; 0: off)"
    )
    parser.add_argument("--chain-port", type=int, default=None, help="JSON-RPC port of the embedded chain (8545)")
    parser.add_argument("--chain-url", default=None, help="JSON-RPC URL of an external chain")
    parser.add_argument("--max-parallel-jobs", type=int, default=None, help="jobs run at once (default 1)")
    # transport security; --tls-cert/--tls-key may also stand before the command (as the client's do)
    tls = parser.add_argument_group("transport security (docs/SECURITY.md)")
    tls.add_argument(
        "--tls-cert", default=argparse.SUPPRESS, metavar="FILE", help="PEM certificate chain: serve TLS only"
    )
    tls.add_argument("--tls-key", default=argparse.SUPPRESS, metavar="FILE", help="PEM private key of --tls-cert")
    tls.add_argument(
        "--tls-client-ca", default=None, metavar="FILE", help="require client certificates signed by this CA (mTLS)"
    )
    tls.add_argument(
        "--tls-admin",
        action="append",
        default=None,
        metavar="NAME",
        help="a client certificate name (CN) that is an admin; repeat",
    )
    tls.add_argument(
        "--auth",
        default=None,
        choices=AUTH_MODES,
        help="none: every call is the local admin (default, $QUANTLEDGER_AUTH); tokens: every call needs a token",
    )
    tls.add_argument(
        "--insecure-listen",
        action="store_true",
        default=None,
        help="listen beyond loopback without TLS and authentication (logs a warning on every start)",
    )
    parser.add_argument(
        "--retain",
        default=None,
        metavar="DURATION",
        help="delete outputs of jobs that ended longer ago than this (30d, 12h, 90m, 45s; default: keep)",
    )


def _add_backend_flags(parser: argparse.ArgumentParser, *, worker: bool = False) -> None:
    """Where distributed jobs run (docs/SCALE_OUT.md): Temporal and the artifact store."""
    group = parser.add_argument_group("distributed backend (docs/SCALE_OUT.md)")
    if not worker:
        group.add_argument(
            "--backend",
            default=None,
            choices=BACKENDS,
            help="embedded: SQLite and local workers (default, $QUANTLEDGER_BACKEND); temporal: Temporal and S3",
        )
    group.add_argument(
        "--temporal", default=None, metavar="HOST:PORT", help="Temporal frontend ($QUANTLEDGER_TEMPORAL)"
    )
    group.add_argument("--temporal-namespace", default=None, metavar="NAME", help="Temporal namespace (default)")
    group.add_argument("--temporal-tls-ca", default=None, metavar="FILE", help="CA of Temporal's TLS certificate")
    group.add_argument("--temporal-tls-cert", default=None, metavar="FILE", help="client certificate for Temporal")
    group.add_argument("--temporal-tls-key", default=None, metavar="FILE", help="key of --temporal-tls-cert")
    group.add_argument(
        "--artifacts", default=None, metavar="s3://BUCKET/PREFIX", help="artifact store ($QUANTLEDGER_ARTIFACTS)"
    )


def _add_job_inputs(parser: argparse.ArgumentParser, *, out_required: bool = False) -> None:
    parser.add_argument(
        "source",
        help="GGUF file (F32/F16/BF16) or a directory holding one, a Hugging Face model folder, or owner/name[@rev]",
    )
    parser.add_argument("--quant", "-q", action="append", required=True, metavar="TYPE", help="e.g. Q4_K_M; repeat")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: one per core)")
    parser.add_argument("--allow-requantize", action="store_true", help="accept an already quantized source")
    parser.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight unquantized")
    parser.add_argument("--pure", action="store_true", help="no per-tensor upgrades of the mix")
    parser.add_argument("--output-tensor-type", default="", metavar="GGML_TYPE")
    parser.add_argument("--token-embedding-type", default="", metavar="GGML_TYPE")
    parser.add_argument(
        "--override", action="append", default=[], metavar="REGEX=GGML_TYPE", help="per-tensor type; repeat"
    )
    parser.add_argument(
        "--tensor-type-file",
        default="",
        metavar="FILE",
        help="per-tensor types, one REGEX=GGML_TYPE per line as llama-quantize reads them (after --override)",
    )
    parser.add_argument("--keep-split", action="store_true", help="split outputs like a split source")
    parser.add_argument(
        "--imatrix",
        default="",
        metavar="FILE|auto",
        help="importance matrix (GGUF or .dat), or auto: computed by the job for types below 5 bits (docs/IMATRIX.md)",
    )
    parser.add_argument(
        "--calibration",
        default="",
        metavar="FILE",
        help="calibration text of --imatrix auto (default: the shipped one)",
    )
    parser.add_argument("--calibration-chunks", type=int, default=0, help="chunks of it to run (default: all)")
    parser.add_argument("--calibration-ctx", type=int, default=0, help="tokens per chunk (default 512)")
    parser.add_argument(
        "--include-weights",
        action="append",
        default=[],
        metavar="NAME",
        help="give the importance matrix only to tensors whose name contains NAME; repeat",
    )
    parser.add_argument(
        "--exclude-weights",
        action="append",
        default=[],
        metavar="NAME",
        help="give it to every tensor except those whose name contains NAME; repeat",
    )
    parser.add_argument(
        "--override-kv",
        action="append",
        default=[],
        metavar="KEY=TYPE:VALUE",
        help="set metadata in the outputs (TYPE int, float, bool or str); repeat",
    )
    parser.add_argument("--prune-layers", default="", metavar="L0,L1,...", help="leave these blocks out of the outputs")
    parser.add_argument(
        "--split-max-size",
        default="",
        metavar="N(M|G)",
        help="write each output as shards of at most this much tensor data (decimal M/G, as llama-gguf-split)",
    )
    parser.add_argument("--split-max-tensors", type=int, default=0, metavar="N", help="or as shards of N tensors each")
    parser.add_argument(
        "--out",
        default="",
        required=out_required,
        metavar="DIR",
        help="output directory" + ("" if out_required else " (default: data dir)"),
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--lora", default="", metavar="DIR", help="PEFT LoRA adapter merged before conversion (HF sources)"
    )
    parser.add_argument("--max-kld", type=float, default=0.0, metavar="X", help="fail when an output's mean KLD > X")
    parser.add_argument(
        "--min-cosine", type=float, default=0.0, metavar="X", help="embedders: fail when an output's mean cosine < X"
    )
    parser.add_argument(
        "--min-ndcg",
        type=float,
        default=0.0,
        metavar="X",
        help="rerankers: fail when an output's NDCG@5 against the unquantized model < X",
    )
    parser.add_argument("--no-quality", action="store_true", help="do not measure output quality")
    parser.add_argument(
        "--intermediate-type",
        default="",
        choices=["", "F16", "BF16", "F32", "Q8_0"],
        help="GGUF type HF sources convert to",
    )
    parser.add_argument(
        "--model-name", default="", help="general.name of a HF source's outputs (default: the folder or repo name)"
    )
    parser.add_argument("--eval-text", default="", metavar="FILE", help="evaluation text for causal models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantledger", description="llama.cpp GGUF quantization as a service")
    parser.add_argument("--version", action="version", version=f"quantledger {__version__}")
    _add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="make a small model and run the whole pipeline on it")
    _add_common(demo)

    # allow_abbrev off: no abbreviation of --insecure-listen (or any other flag) lowers a server's guard
    up = commands.add_parser(
        "up", help="embedded chain + every service (gRPC 127.0.0.1:50051, JSON-RPC :8545)", allow_abbrev=False
    )
    _add_common(up, client=False)
    _add_serve_flags(up)

    serve = commands.add_parser("serve", help="run one or more services in one server", allow_abbrev=False)
    _add_common(serve, client=False)
    serve.add_argument(
        "service",
        nargs="+",
        choices=["quantize", "recommend", "registry", "chain", "reproducer"],
        help="services to run in one server (chain and reproducer run alone)",
    )
    _add_serve_flags(serve)
    _add_backend_flags(serve)
    add_reproducer_flags(serve)

    worker = commands.add_parser(
        "worker", help="run distributed jobs' steps for a pool of frontends (Temporal + S3)", allow_abbrev=False
    )
    _add_common(worker, client=False)
    _add_backend_flags(worker, worker=True)
    worker.add_argument("--max-parallel", type=int, default=1, help="steps this machine runs at once (default 1)")
    worker.add_argument("--threads", type=int, default=0, help="llama.cpp threads of a step whose job says 0")
    worker.add_argument("--chain-url", default=None, help="JSON-RPC URL of the chain outputs are registered on")
    worker.add_argument(
        "--scratch",
        default=None,
        metavar="DIR",
        help="scratch space for steps (default: $QUANTLEDGER_SCRATCH or <home>/scratch)",
    )

    submit = commands.add_parser("submit", help="create a quantization job")
    _add_common(submit)
    _add_job_inputs(submit)
    submit.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    submit.add_argument("--request-id", default="", help="idempotency key: a retry returns the same job")

    jobs = commands.add_parser("jobs", help="list, show, watch, cancel jobs or delete their outputs")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = job_commands.add_parser("list", help="list jobs, newest first")
    _add_common(listing)
    listing.add_argument("--page-size", type=int, default=0)
    listing.add_argument("--page-token", default="")
    for action, text in (
        ("show", "show one job"),
        ("watch", "follow a job until it ends"),
        ("cancel", "cancel a job"),
        ("delete", "delete an ended job's output files (the job stays listed)"),
    ):
        sub = job_commands.add_parser(action, help=text)
        _add_common(sub)
        sub.add_argument("name", help="job name (jobs/ID) or id")

    estimate = commands.add_parser("estimate", help="predict sizes, disk and time without running")
    _add_common(estimate)
    _add_job_inputs(estimate)

    types = commands.add_parser("quant-types", help="list the quantization types llama.cpp offers")
    _add_common(types)

    add_recommend_parser(commands, _add_common)
    add_registry_parser(commands, _add_common)
    add_tokens_parser(commands, _add_common)
    add_imatrix_parser(commands, _add_common)
    quantize = commands.add_parser("quantize", help="quantize locally with the same engine, no server")
    _add_common(quantize)
    _add_job_inputs(quantize, out_required=True)
    return parser


def _source_argument(source: str) -> str:
    """A hub id as given; a local path made absolute (the server resolves paths from its own directory)."""
    return source if names_hub_model(source) else local_path(source)


def _tensor_type_lines(path: str) -> list[tuple[str, str]]:
    """The ``REGEX=GGML_TYPE`` lines of a tensor-type file (blank lines skipped), each with where it is."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandFailed("INVALID_ARGUMENT", f"--tensor-type-file {path}: {exc}", "INVALID_ARGUMENT") from None
    return [
        (f"--tensor-type-file {path} line {n}", line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


def _layer_numbers(text: str) -> list[int]:
    """``--prune-layers 1,3`` as llama-quantize reads it: comma-separated block numbers."""
    if not text.strip():
        return []
    try:
        return [int(part, 10) for part in text.split(",")]
    except ValueError:
        raise CommandFailed(
            "INVALID_ARGUMENT", f"--prune-layers {text!r}: expected comma-separated layer numbers", "INVALID_ARGUMENT"
        ) from None


def _split_size(text: str) -> int:
    """``--split-max-size 4G`` as llama-gguf-split reads it: a positive whole number of decimal
    megabytes (M) or gigabytes (G)."""
    if not text:
        return 0
    units = {"M": 1000**2, "G": 1000**3}
    number, unit = text[:-1], text[-1:].upper()
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise CommandFailed(
            "INVALID_ARGUMENT",
            f"--split-max-size {text!r}: expected a positive number and M or G, such as 4G",
            "INVALID_ARGUMENT",
        )
    return int(number) * units[unit]


def job_request(args: argparse.Namespace) -> pb.QuantizeJob:
    """The job of a submit/estimate/quantize command. Overrides keep their order (llama.cpp gives a tensor
    the type of the first pattern that matches it): the ``--override`` flags, then the file's lines."""
    overrides = []
    entries = [(f"--override {item!r}", item) for item in args.override]
    if args.tensor_type_file:
        entries += _tensor_type_lines(args.tensor_type_file)
    for where, item in entries:
        pattern, sep, type_name = item.rpartition("=")
        if not sep or not pattern or not type_name:
            raise CommandFailed("INVALID_ARGUMENT", f"{where}: expected REGEX=GGML_TYPE", "INVALID_ARGUMENT")
        overrides.append(pb.TensorTypeOverride(pattern=pattern, type=type_name))
    return pb.QuantizeJob(
        source=_source_argument(args.source),
        quant_types=args.quant,
        options=pb.QuantizeOptions(
            threads=args.threads,
            allow_requantize=args.allow_requantize,
            leave_output_tensor=args.leave_output_tensor,
            pure=args.pure,
            output_tensor_type=args.output_tensor_type,
            token_embedding_type=args.token_embedding_type,
            tensor_type_overrides=overrides,
            keep_split=args.keep_split,
            imatrix_path=("auto" if args.imatrix.lower() == "auto" else os.path.abspath(args.imatrix))
            if args.imatrix
            else "",
            calibration_path=os.path.abspath(args.calibration) if args.calibration else "",
            calibration_chunks=args.calibration_chunks,
            calibration_ctx=args.calibration_ctx,
            imatrix_include_weights=args.include_weights,
            imatrix_exclude_weights=args.exclude_weights,
            kv_overrides=args.override_kv,
            prune_layers=_layer_numbers(args.prune_layers),
            split_max_bytes=_split_size(args.split_max_size),
            split_max_tensors=args.split_max_tensors,
            output_dir=os.path.abspath(args.out) if args.out else "",
            overwrite=args.overwrite,
            lora_dir=os.path.abspath(args.lora) if args.lora else "",
            max_kl_divergence=args.max_kld,
            min_cosine_similarity=args.min_cosine,
            min_ndcg=args.min_ndcg,
            skip_quality=args.no_quality,
            intermediate_type=args.intermediate_type,
            model_name=args.model_name,
            eval_text_path=os.path.abspath(args.eval_text) if args.eval_text else "",
        ),
    )


def _job_name(name: str) -> str:
    return name if name.startswith("jobs/") else f"jobs/{name}"


# ------------------------------------------------------------------ client commands


def _stub(args: argparse.Namespace) -> pb_grpc.QuantizeServiceStub:
    return pb_grpc.QuantizeServiceStub(open_channel(args))


def follow(jobs: Iterator[pb.QuantizeJob], args: argparse.Namespace, *, lines: bool) -> pb.QuantizeJob:
    """Show snapshots (a bar, or JSON lines) and return the last one."""
    bar = None if args.json else ProgressBar()
    last: pb.QuantizeJob | None = None
    try:
        for job in jobs:
            last = job
            if args.json and lines:
                print_json(job)
            elif bar is not None:
                bar.update(job)
    finally:
        if bar is not None:
            bar.close()
    assert last is not None
    return last


def _finish_job(job: pb.QuantizeJob, args: argparse.Namespace, *, printed: bool = False) -> int:
    if not printed:
        if args.json:
            print_json(job)
        else:
            print_job(job)
    if job.state == pb.QuantizeJob.STATE_SUCCEEDED:
        return 0
    if job.state in (pb.QuantizeJob.STATE_FAILED, pb.QuantizeJob.STATE_CANCELLED):
        reason = error_reason(job) if job.error.code else state_name(job)
        message = in_flag_terms(job.error.message, args.command) or state_name(job)
        print(f"error: {reason}: {message}", file=sys.stderr)
        return 1
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    stub = _stub(args)
    job = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job_request(args), request_id=args.request_id))
    if not args.wait:
        if args.json:
            print_json(job)
        else:
            print_job(job)
        return 0
    if not args.json:
        print(f"{job.name} created; following it (Ctrl-C stops following, not the job)", file=sys.stderr)
    final = follow(stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name)), args, lines=False)
    return _finish_job(final, args)


def cmd_jobs(args: argparse.Namespace) -> int:
    stub = _stub(args)
    action = args.jobs_command
    if action == "list":
        response = stub.ListQuantizeJobs(
            pb.ListQuantizeJobsRequest(page_size=args.page_size, page_token=args.page_token)
        )
        if args.json:
            print_json(response)
            return 0
        for job in response.jobs:
            types = ",".join(job.quant_types)
            print(f"{job.name}  {state_name(job):<9}  {types:<24}  {job.source}")
        if response.next_page_token:
            print(f"more: --page-token {response.next_page_token}")
        return 0
    name = _job_name(args.name)
    if action == "show":
        job = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=name))
        if args.json:
            print_json(job)
        else:
            print_job(job)
        return 0
    if action == "watch":
        final = follow(stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=name)), args, lines=True)
        return _finish_job(final, args, printed=args.json)
    if action == "delete":
        job = stub.DeleteQuantizeJob(pb.DeleteQuantizeJobRequest(name=name))
    else:
        job = stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=name))
    if args.json:
        print_json(job)
    else:
        print_job(job)
    return 0


def print_estimate(response: pb.EstimateQuantizeJobResponse) -> None:
    from quantledger.cli.render import human_bytes

    info = response.source_info
    size = human_bytes(info.size_bytes)
    print(f"source  {info.path}  ({info.architecture}, {info.parameter_count:,} parameters, {size})")
    for output in response.outputs:
        basis = "measured" if output.throughput_basis == pb.THROUGHPUT_BASIS_MEASURED else "default"
        seconds = output.duration.ToTimedelta().total_seconds()
        print(
            f"  {output.quant_type:<10} {output.size_bytes:>14,} bytes  {output.bits_per_weight:6.3f} BPW  "
            f"fallbacks {output.fallback_tensor_count:<3} ~{seconds:.1f}s ({basis})"
        )
    fits = "fits" if response.fits_on_disk else "DOES NOT FIT"
    print(
        f"disk    needs {human_bytes(response.disk_bytes_needed)}, {human_bytes(response.disk_bytes_free)} free "
        f"in {response.output_dir}: {fits}"
    )
    print(f"time    ~{response.duration.ToTimedelta().total_seconds():.1f}s")


def cmd_estimate(args: argparse.Namespace) -> int:
    response = _stub(args).EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=job_request(args)))
    if args.json:
        print_json(response)
    else:
        print_estimate(response)
    return 0


def cmd_quant_types(args: argparse.Namespace) -> int:
    response = _stub(args).ListQuantTypes(pb.ListQuantTypesRequest())
    if args.json:
        print_json(response)
        return 0
    print(f"{'TYPE':<10} {'FTYPE':>5}  {'FAMILY':<8} {'BPW':>5}  IMATRIX  DESCRIPTION")
    for t in response.quant_types:
        bpw = f"{t.typical_bits_per_weight:.2f}" if t.typical_bits_per_weight else "-"
        imatrix = "yes" if t.requires_imatrix else ""
        print(f"{t.name:<10} {t.file_type:>5}  {t.family:<8} {bpw:>5}  {imatrix:<7}  {t.description}")
        if t.use_for:
            print(f"{'':<40}use it for: {t.use_for}")
        if not t.available:
            print(f"{'':<40}not installed: {t.requires}")
    print(f"({response.llama_cpp_build}, through {response.llama_cpp_version})")
    return 0


# ------------------------------------------------------------------ local commands


def _backend_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "backend": getattr(args, "backend", None),
        "temporal_address": getattr(args, "temporal", None),
        "temporal_namespace": getattr(args, "temporal_namespace", None),
        "temporal_tls_ca": getattr(args, "temporal_tls_ca", None),
        "temporal_tls_cert": getattr(args, "temporal_tls_cert", None),
        "temporal_tls_key": getattr(args, "temporal_tls_key", None),
        "artifacts_uri": getattr(args, "artifacts", None),
    }


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        **_backend_overrides(args),
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        chain_port=args.chain_port,
        chain_url=args.chain_url,
        max_parallel_jobs=args.max_parallel_jobs,
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        tls_client_ca=args.tls_client_ca,
        tls_admins=tuple(args.tls_admin) if args.tls_admin else None,
        auth=args.auth,
        insecure_listen=args.insecure_listen,
        retain_seconds=parse_duration(args.retain, "--retain") if args.retain is not None else None,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from quantledger.cli.services import run_services

    settings = _settings(args)
    if args.command == "up":
        everything = ["quantize", "recommend", "registry"]
        return run_services(settings, everything, as_json=args.json, embedded_chain=not settings.chain_url)
    if "reproducer" in args.service:
        if len(args.service) > 1:
            raise CommandFailed("INVALID_ARGUMENT", "serve reproducer runs alone: start the other services separately")
        return cmd_reproducer(args, settings)
    if "chain" in args.service and len(args.service) > 1:
        raise CommandFailed("INVALID_ARGUMENT", "serve chain runs alone: start the chain and the services separately")
    return run_services(settings, list(dict.fromkeys(args.service)), as_json=args.json, embedded_chain=False)


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from quantledger.distributed.worker import run_worker

    overrides = {
        **_backend_overrides(args),
        "backend": "temporal",
        "chain_url": args.chain_url,
        "scratch_dir": args.scratch,
    }
    settings = Settings.from_env(**overrides)
    if args.max_parallel < 1 or args.threads < 0:
        raise CommandFailed("INVALID_ARGUMENT", "--max-parallel must be at least 1 and --threads at least 0")
    return asyncio.run(run_worker(settings, max_parallel=args.max_parallel, threads=args.threads))


def cmd_quantize(args: argparse.Namespace) -> int:
    from quantledger.cli.local import quantize_locally

    job = quantize_locally(job_request(args), show_progress=not args.json)
    return _finish_job(job, args)


def cmd_demo(args: argparse.Namespace) -> int:
    from quantledger.cli.demo import run_demo

    return run_demo(json_output=args.json)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "up": cmd_serve,
    "serve": cmd_serve,
    "worker": cmd_worker,
    "submit": cmd_submit,
    "jobs": cmd_jobs,
    "estimate": cmd_estimate,
    "quant-types": cmd_quant_types,
    "quantize": cmd_quantize,
    "imatrix": cmd_imatrix,
    "recommend": cmd_recommend,
    "registry": cmd_registry,
    "tokens": cmd_tokens,
}


def _rpc_failure(exc: grpc.RpcError, args: argparse.Namespace) -> CommandFailed:
    status = rpc_status.from_call(exc)
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return CommandFailed(info.reason, status.message, code)
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == "UNAVAILABLE":
        return CommandFailed(
            "SERVER_UNAVAILABLE", unavailable_message(str(details), ClientTransport.from_args(args)), code
        )
    return CommandFailed(code, str(details), code)


def _run(args: argparse.Namespace) -> int:
    """The command's exit status; a failure printed with its reason, its message in flag terms."""
    as_json = getattr(args, "json", False)
    try:
        return HANDLERS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except grpc.RpcError as exc:
        failure = _rpc_failure(exc, args)
    except QuantledgerError as exc:
        failure = CommandFailed(exc.reason, exc.message, exc.code)
    except CommandFailed as exc:
        failure = exc
    message = in_flag_terms(failure.message, args.command)
    if as_json:
        print_json({"error": {"reason": failure.reason, "code": failure.code, "message": message}})
    print(f"error: {failure.reason}: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("QUANTLEDGER_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.server is None:
        args.server = _server_default()
    try:
        status = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except BrokenPipeError:
        # the reader went away (`quantledger jobs show J | head -1`): stop quietly, as Unix tools do;
        # stdout goes to /dev/null so that the interpreter's own flush at exit has nowhere to fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    return status


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "to_json"]
