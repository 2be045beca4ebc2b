"""``quantledger recommend``: which quantization of a model fits a machine.

    quantledger recommend model.gguf --ram 16G --gpu cuda:8G
    quantledger recommend mistralai/Mistral-7B-v0.1 --tier workstation --ctx 32768 --json
    quantledger recommend --params 70B --family llama --gpu cuda:24G --ram 64G --prefer quality

MODEL is a GGUF file, a Hugging Face folder or hub id, or a file digest (files/SHA-256) this
deployment made; ``--params`` (with ``--family``) describes a model instead. The question goes to the
RecommendService of ``--server``; ``--local`` answers in this process instead (no server needed; paths
are then read by this process).
"""

from __future__ import annotations

import argparse
import pathlib
import re
from typing import Any

from quantledger.cli.arguments import names_hub_model
from quantledger.cli.channels import open_channel
from quantledger.cli.render import human_bytes, print_json
from quantledger.errors import InvalidArgument
from quantledger.recommend.service import parse_bytes
from quantledger.v1 import recommend_service_pb2 as pb
from quantledger.v1 import recommend_service_pb2_grpc as pb_grpc

_PREFER = {"quality": pb.PREFERENCE_QUALITY, "balanced": pb.PREFERENCE_BALANCED, "speed": pb.PREFERENCE_SPEED,
           "size": pb.PREFERENCE_SIZE}  # fmt: skip
_KIND = {"cuda": pb.Device.KIND_CUDA, "metal": pb.Device.KIND_METAL}


def add_recommend_parser(commands: Any, add_common: Any) -> None:
    parser = commands.add_parser("recommend", help="which quantization fits a machine: size, memory, speed, quality")
    add_common(parser)
    parser.add_argument("model", nargs="?", default="", help="GGUF file, HF folder or hub id, or files/SHA-256")
    parser.add_argument("--params", default="", help="describe the model by parameter count instead: 8B, 70B, 1.5B")
    parser.add_argument("--family", default="llama", help="family for --params: llama, mistral, qwen2")
    parser.add_argument("--tier", default="", help="laptop, workstation, server or enterprise")
    parser.add_argument("--ram", default="", help="system RAM, such as 16G")
    parser.add_argument("--cores", type=int, default=0, help="CPU cores")
    parser.add_argument(
        "--gpu",
        action="append",
        default=[],
        help="an accelerator as KIND:MEMORY[:GBPS], such as cuda:24G or metal:64G:400",
    )
    parser.add_argument("--cpu-only", action="store_true", help="use no accelerator, even a tier's")
    parser.add_argument("--unified", action="store_true", help="the accelerator shares the RAM (Apple silicon)")
    parser.add_argument("--ctx", type=int, default=None, help="context length (default: the model's, at most 32768)")
    parser.add_argument("--batch", type=int, default=0, help="micro-batch size (default 512)")
    parser.add_argument("--kv", default="", help="KV cache type: f16, q8_0, q4_0 (default: chosen)")
    parser.add_argument("--prefer", choices=sorted(_PREFER), default="balanced", help="ranking preference")
    parser.add_argument("--max-size", default="", help="largest acceptable file, such as 5G")
    parser.add_argument("--max-kld", type=float, default=0.0, help="largest acceptable mean KL divergence")
    parser.add_argument("--imatrix", action="store_true", help="an importance matrix will be used")
    parser.add_argument("--swa-full", action="store_true", help="full-size cache in sliding-window layers too")
    parser.add_argument("--options", type=int, default=0, help="options to show (default 5)")
    parser.add_argument(
        "--hf-formats",
        action="store_true",
        help="also rate the Hugging Face formats (HF_BNB_NF4, …) under transformers",
    )
    parser.add_argument("--local", action="store_true", help="answer in this process, without a server")


def _device(text: str) -> pb.Device:
    match = re.fullmatch(
        r"(?P<kind>[a-z]+):(?P<memory>[0-9.]+[KMGT]?(?:i?B)?)(?::(?P<bw>[0-9.]+))?", text.strip(), re.IGNORECASE
    )
    if match is None or match["kind"].lower() not in _KIND:
        raise InvalidArgument(f"--gpu {text!r}: write KIND:MEMORY[:GBPS] with KIND cuda or metal, such as cuda:24G")
    bandwidth = float(match["bw"]) * 1e9 if match["bw"] else 0.0
    return pb.Device(
        kind=_KIND[match["kind"].lower()],
        memory_bytes=parse_bytes(match["memory"]),
        bandwidth_bytes_per_second=bandwidth,
    )


def _parameters(text: str) -> int:
    match = re.fullmatch(r"([0-9.]+)\s*([KMBT]?)", text.strip().upper())
    if match is None:
        raise InvalidArgument(f"--params {text!r}: write a count such as 8B, 1.5B or 8000000000")
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[match[2]]
    return int(float(match[1]) * scale)


def _model(args: argparse.Namespace) -> pb.ModelSpec:
    if args.params:
        if args.model:
            raise InvalidArgument("give MODEL or --params, not both")
        return pb.ModelSpec(
            description=pb.ModelSpec.Description(parameter_count=_parameters(args.params), family=args.family)
        )
    raw = args.model
    if not raw:
        raise InvalidArgument("name a model (a GGUF file, an HF folder or hub id, files/SHA-256) or give --params")
    if re.fullmatch(r"(files/)?[0-9a-fA-F]{64}", raw):
        return pb.ModelSpec(registry_file=raw)
    if names_hub_model(raw):
        return pb.ModelSpec(hf_repo=raw)
    path = pathlib.Path(raw).expanduser()
    absolute = str(path.resolve())
    is_hf = path.is_dir() and (path / "config.json").is_file() and not any(path.glob("*.gguf"))
    return pb.ModelSpec(hf_folder=absolute) if is_hf else pb.ModelSpec(gguf_path=absolute)


def build_request(args: argparse.Namespace) -> pb.RecommendRequest:
    hardware = pb.Hardware(
        tier=args.tier,
        ram_bytes=parse_bytes(args.ram) if args.ram else 0,
        cores=args.cores,
        devices=[_device(g) for g in args.gpu],
        unified_memory=args.unified,
        cpu_only=args.cpu_only,
    )
    return pb.RecommendRequest(
        model=_model(args),
        hardware=hardware,
        context_length=args.ctx,
        batch_size=args.batch,
        kv_cache_type=args.kv,
        preference=_PREFER[args.prefer],
        max_size_bytes=parse_bytes(args.max_size) if args.max_size else 0,
        max_kl_divergence=args.max_kld,
        imatrix=args.imatrix,
        max_options=args.options,
        full_swa_cache=args.swa_full,
        hf_formats=args.hf_formats,
    )


def _answer_locally(request: pb.RecommendRequest) -> pb.RecommendResponse:
    from quantledger.config import Settings
    from quantledger.grpc_api.recommend_converters import query_from_proto, recommendation_to_proto
    from quantledger.jobs.store import SqliteJobStore
    from quantledger.recommend.wiring import make_recommender

    settings = Settings.from_env()
    settings.ensure_dirs()
    recommender = make_recommender(settings, SqliteJobStore(str(settings.database)))
    return recommendation_to_proto(recommender.recommend(query_from_proto(request)))


def print_recommendation(response: pb.RecommendResponse) -> None:
    print(response.model_summary)
    print(f"on {response.hardware_summary}")
    print()
    print(
        f"{'':2}{'TYPE':<9} {'SIZE':>9} {'BPW':>5} {'CONTEXT':>7} {'KV':<5} {'GPU':>7} {'MEMORY':<26} "
        f"{'TOK/S':>6} {'KLD':>7} {'PPL':>7}"
    )
    for rank, o in enumerate(response.options, 1):
        memory = ", ".join(f"{d.device} {human_bytes(d.bytes_used)}" for d in o.devices if d.bytes_used)
        mark = f"{rank}." if o.fits else "✗"
        print(
            f"{mark:<2}{o.quant_type:<9} {human_bytes(o.size_bytes):>9} {o.bits_per_weight:>5.2f} "
            f"{o.context_length:>7} {o.kv_cache_type:<5} {o.gpu_layers:>3}/{o.total_layers:<3} {memory:<26} "
            f"{o.tokens_per_second:>6.1f} {o.quality.mean_kl_divergence:>7.4f} "
            f"{100 * o.quality.perplexity_change:>+6.1f}%"
        )
    if response.options:
        print()
        best = response.options[0]
        print(("Recommended: " if best.fits else "Nothing fits; closest: ") + best.quant_type)
        for reason in best.reasons:
            print(f"  - {reason}")
    if response.hf_formats:
        print("\nHugging Face formats under transformers:")
        print(f"{'':2}{'FORMAT':<12} {'WEIGHTS':>9} {'KV':>9} {'MEMORY':>9} {'DEVICE':<7} {'KLD':>7}  NOTE")
        for f in response.hf_formats:
            print(
                f"{'✓' if f.fits else '✗':<2}{f.format:<12} {human_bytes(f.weight_bytes):>9} "
                f"{human_bytes(f.kv_cache_bytes):>9} {human_bytes(f.memory_bytes):>9} {f.device:<7} "
                f"{f.quality.mean_kl_divergence:>7.4f}  {f.note}"
            )
    sizes = "exact (from the tensor list)" if response.exact_sizes else "derived from the configuration"
    print(f"\nsizes {sizes}; speed and quality are predictions")


def cmd_recommend(args: argparse.Namespace) -> int:
    request = build_request(args)
    if args.local:
        response = _answer_locally(request)
    else:
        stub = pb_grpc.RecommendServiceStub(open_channel(args))
        response = stub.Recommend(request, timeout=60)
    if args.json:
        print_json(response)
    else:
        print_recommendation(response)
    return 0 if response.any_fits else 1
