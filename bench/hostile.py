"""Replays a corpus of hostile requests against `quantledger up` under bounded concurrent load.

    python bench/hostile.py [--rounds 3] [--concurrency 8] [--deadline 30]

Starts `quantledger up` (embedded chain included) in a fresh data dir, writes the hostile files
(deep-JSON configs and tokens, symlinks out of the roots, a FIFO, truncated and bloated GGUFs, broken
model folders, catastrophic regexes, absurd sizes), then runs every case --rounds times with
--concurrency calls in flight, while health is probed and a few valid jobs run beside them. Each case
names the (code, reason) it must get. Prints: cases tried, refused with the right reason, wrong
answers, hangs (a call past --deadline), server and chain restarts (the process ids change), lost
or stranded jobs (a created job missing from the listing, or not finished when all should be), and
the server's RSS before and after. Bounded in count and time; loopback only. Exit status 1 when any
figure that must be 0 is not.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
import psutil  # noqa: E402
from conftest import error_reason, free_port, up_argv, wait_serving  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from quantledger.testing.synthetic_model import write_llama_gguf  # noqa: E402
from quantledger.v1 import quantize_service_pb2 as pb  # noqa: E402
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc  # noqa: E402
from quantledger.v1 import registry_service_pb2 as registry_pb  # noqa: E402
from quantledger.v1 import registry_service_pb2_grpc as registry_grpc  # noqa: E402

DEEP = "[" * 100_000 + "]" * 100_000


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[], object]
    expect: frozenset[str]  # acceptable "CODE/REASON" answers ("OK" for an accepted call)


def grpc_answer(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "HANG"
        try:
            return f"{exc.code().name}/{error_reason(exc)}"
        except AssertionError:
            return f"{exc.code().name}/(no reason)"
    return "OK"


def write_corpus(root: pathlib.Path, outside: pathlib.Path) -> dict[str, pathlib.Path]:
    """Hostile files under ``root``; ``outside`` is a directory the server may not read."""
    files: dict[str, pathlib.Path] = {}
    secret = outside / "secret.safetensors"
    secret.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00TOPSECRET-BYTES!" + b"\0" * 64)

    def hf_folder(name: str, config: str, weights: bytes | None = None) -> pathlib.Path:
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(config)
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        files[name] = folder
        return folder

    hf_folder("deep-config", '{"architectures": ["LlamaForCausalLM"], "x": ' + DEEP + "}")
    header = json.dumps({"a": DEEP}).encode()
    hf_folder("deep-safetensors", '{"architectures": ["LlamaForCausalLM"]}', len(header).to_bytes(8, "little") + header)
    linked = hf_folder("symlinked-weights", '{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    (linked / "model.safetensors").symlink_to(secret)
    index = hf_folder("index-escape", '{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    weight_map = {"model.embed_tokens.weight": str(secret), "lm_head.weight": "../../" + secret.name}
    (index / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fifo = root / "fifo.gguf"
    os.mkfifo(fifo)
    files["fifo"] = fifo
    good = root / "good-f16.gguf"
    write_llama_gguf(good, n_embd=256, n_ff=512, n_layer=2, seed=1)
    files["good"] = good
    truncated = root / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:4096])
    files["truncated"] = truncated
    bloated = root / "bloated.gguf"  # claims 10^12 metadata keys
    bloated.write_bytes(
        b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little") + (10**12).to_bytes(8, "little")
    )
    files["bloated"] = bloated
    (root / "escape-link.gguf").symlink_to(outside / "elsewhere.gguf")
    files["escape_link"] = root / "escape-link.gguf"
    return files


def cases(
    address: str, chain_url: str, files: dict[str, pathlib.Path], outside: pathlib.Path, deadline: float
) -> list[Case]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    stub, registry = pb_grpc.QuantizeServiceStub(channel), registry_grpc.RegistryServiceStub(channel)

    def create(source: str, types: tuple[str, ...] = ("Q8_0",), **options: object) -> Callable[[], object]:
        job = pb.QuantizeJob(source=source, quant_types=list(types), options=pb.QuantizeOptions(**options))  # type: ignore[arg-type]
        return lambda: stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job), timeout=deadline)

    deep_token = base64.urlsafe_b64encode(('{"before":' + DEEP + "}").encode()).decode()
    invalid = frozenset({"INVALID_ARGUMENT/INVALID_ARGUMENT"})
    source_invalid = frozenset({"INVALID_ARGUMENT/SOURCE_INVALID"})
    not_allowed = frozenset({"PERMISSION_DENIED/PATH_NOT_ALLOWED"})
    out = str(files["good"].parent / "bench-out")

    def chain_post(body: bytes, headers: dict[str, str]) -> Callable[[], object]:
        def post() -> object:
            request = urllib.request.Request(chain_url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=deadline) as reply:
                    answer = json.loads(reply.read() or b"{}")
                    cors = reply.headers.get("Access-Control-Allow-Origin")
            except urllib.error.HTTPError as exc:
                if exc.code in (400, 403, 413):
                    raise grpc_like(f"HTTP/{exc.code}") from None
                raise
            if cors == "*":
                raise grpc_like("HTTP/CORS_STAR")
            error = answer.get("error") if isinstance(answer, dict) else None
            raise grpc_like(f"JSONRPC/{error['code']}" if error else "JSONRPC/OK")

        return post

    return [
        Case(
            "deep page token (jobs)",
            lambda: stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest(page_token=deep_token), timeout=deadline),
            invalid,
        ),
        Case(
            "deep page token (types)",
            lambda: stub.ListQuantTypes(pb.ListQuantTypesRequest(page_token=deep_token), timeout=deadline),
            invalid,
        ),
        Case(
            "deep page token (records)",
            lambda: registry.ListRecords(
                registry_pb.ListRecordsRequest(parent="files/" + "ab" * 32, page_token=deep_token), timeout=deadline
            ),
            invalid,
        ),
        Case(
            "forged JSON page token",
            lambda: stub.ListQuantizeJobs(
                pb.ListQuantizeJobsRequest(page_token=base64.urlsafe_b64encode(b'{"before": 9}').decode()),
                timeout=deadline,
            ),
            invalid,
        ),
        Case("deep config.json", create(str(files["deep-config"])), source_invalid),
        Case("deep safetensors header", create(str(files["deep-safetensors"])), source_invalid),
        Case(
            "symlinked weights out of the roots", create(str(files["symlinked-weights"])), not_allowed | source_invalid
        ),
        Case("weight index escaping the folder", create(str(files["index-escape"])), not_allowed | source_invalid),
        Case("FIFO source", create(str(files["fifo"])), source_invalid),
        Case("truncated GGUF", create(str(files["truncated"])), source_invalid),
        Case("GGUF claiming 10^12 keys", create(str(files["bloated"])), source_invalid),
        Case("symlink out of the roots", create(str(files["escape_link"])), not_allowed),
        Case("path outside the roots (exists)", create(str(outside / "secret.safetensors")), not_allowed),
        Case("path outside the roots (missing)", create(str(outside / "missing.gguf")), not_allowed),
        Case("3 MB path", create(str(files["good"].parent) + "/a" * 1_500_000), invalid),
        Case("100k quant types", create(str(files["good"]), ("Q8_0",) * 100_000), invalid),
        Case("1 MB quant type", create(str(files["good"]), ("Q" * 1_000_000,)), invalid),
        Case(
            "catastrophic override regex",
            create(
                str(files["good"]),
                tensor_type_overrides=[pb.TensorTypeOverride(pattern="(.|.|.)*ffn_down", type="Q8_0")],
                output_dir=out,
                skip_quality=True,
            ),
            invalid | frozenset({"OK", "ALREADY_EXISTS/OUTPUT_EXISTS"}),
        ),  # accepted once, then its output exists
        Case("NaN quality gate", create(str(files["good"]), max_kl_divergence=float("nan"), output_dir=out), invalid),
        Case("2^31-1 threads", create(str(files["good"]), threads=2**31 - 1, output_dir=out), invalid),
        Case(
            "output into the data dir", create(str(files["good"]), output_dir=str(files["home"] / "keys")), not_allowed
        ),
        Case(
            "chain: deep JSON body",
            chain_post(DEEP.encode(), {"Content-Type": "application/json"}),
            frozenset({"JSONRPC/-32700", "HTTP/400", "HTTP/413"}),
        ),
        Case(
            "chain: cross-origin POST",
            chain_post(
                b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}',
                {"Content-Type": "application/json", "Origin": "https://evil.example"},
            ),
            frozenset({"HTTP/403"}),
        ),
        Case(
            "chain: 100 MB Content-Length",
            chain_post(b"{}", {"Content-Type": "application/json", "Content-Length": str(100 << 20)}),
            frozenset({"HTTP/413", "JSONRPC/-32600"}),
        ),
    ]


class grpc_like(Exception):
    def __init__(self, answer: str) -> None:
        super().__init__(answer)
        self.answer = answer


def run_case(case: Case) -> str:
    try:
        return grpc_answer(case.call)
    except grpc_like as answer:
        return answer.answer
    except (TimeoutError, urllib.error.URLError) as exc:
        return "HANG" if "timed out" in str(exc) else f"ERROR/{exc}"


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--concurrency", type=int, default=8)
    args.add_argument("--deadline", type=float, default=30.0)
    parsed = args.parse_args()
    with tempfile.TemporaryDirectory(prefix="quantledger-hostile-") as work:
        base = pathlib.Path(work)
        home, root, outside = base / "home", base / "root", base / "outside"
        for folder in (home, root, outside):
            folder.mkdir()
        files = write_corpus(root, outside)
        files["home"] = home
        (root / "bench-out").mkdir()
        port, chain_port = free_port(), free_port()
        env = {**os.environ, "QUANTLEDGER_HOME": str(home), "QUANTLEDGER_ALLOWED_ROOTS": f"{root}{os.pathsep}{home}"}
        argv = up_argv(port, chain_port)
        with open(base / "up.log", "w") as log:
            up = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=home)
        try:
            assert up.stdout is not None
            announcement = json.loads(up.stdout.readline())
            address = announcement["address"]
            wait_serving(address)
            server = psutil.Process(up.pid)
            chain_pids = {c.pid for c in server.children() if "chain" in " ".join(c.cmdline())}
            rss_before = server.memory_info().rss
            corpus = cases(address, announcement["chain_url"], files, outside, parsed.deadline)
            channel = grpc.insecure_channel(address)
            stub, health = pb_grpc.QuantizeServiceStub(channel), health_pb2_grpc.HealthStub(channel)
            valid = []
            for i in range(3):  # valid jobs beside the hostile ones
                (root / f"valid-{i}").mkdir()
                job = pb.QuantizeJob(
                    source=str(files["good"]),
                    quant_types=["Q8_0"],
                    options=pb.QuantizeOptions(skip_quality=True, output_dir=str(root / f"valid-{i}")),
                )
                valid.append(stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job, request_id=f"valid-{i}")).name)
            answers: Counter[str] = Counter()
            wrong: list[str] = []
            slowest_health = 0.0
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(parsed.concurrency) as pool:
                pending = {pool.submit(run_case, case): case for _ in range(parsed.rounds) for case in corpus}
                while pending:
                    done, _ = concurrent.futures.wait(
                        pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    probe = time.monotonic()
                    try:
                        health.Check(health_pb2.HealthCheckRequest(), timeout=parsed.deadline)
                    except grpc.RpcError:
                        answers["health unanswered"] += 1
                    slowest_health = max(slowest_health, time.monotonic() - probe)
                    for future in done:
                        case = pending.pop(future)
                        answer = future.result()
                        answers[answer] += 1
                        if answer not in case.expect:
                            wrong.append(f"{case.name}: {answer} (expected {' or '.join(sorted(case.expect))})")
            elapsed = time.monotonic() - started
            finished_by = time.monotonic() + 120
            listed: dict[str, int] = {}
            while time.monotonic() < finished_by:
                listed = {
                    j.name: j.state for j in stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest(page_size=1000)).jobs
                }
                if all(listed.get(name) == pb.QuantizeJob.STATE_SUCCEEDED for name in valid) and all(
                    state not in (pb.QuantizeJob.STATE_QUEUED, pb.QuantizeJob.STATE_RUNNING)
                    for state in listed.values()
                ):
                    break
                time.sleep(0.5)
            lost = [n for n in valid if n not in listed]
            stranded = [n for n in valid if n in listed and listed[n] != pb.QuantizeJob.STATE_SUCCEEDED]
            hostile_jobs = [j for j in listed if j not in valid]  # jobs a hostile case was allowed to make
            ended = (pb.QuantizeJob.STATE_SUCCEEDED, pb.QuantizeJob.STATE_FAILED, pb.QuantizeJob.STATE_CANCELLED)
            stranded += [j for j in hostile_jobs if listed[j] not in ended]
            restarts = int(up.poll() is not None)
            chain_now = (
                {c.pid for c in server.children() if "chain" in " ".join(c.cmdline())} if restarts == 0 else set()
            )
            chain_restarts = int(chain_now != chain_pids)
            rss_after = server.memory_info().rss if restarts == 0 else 0
            hangs = answers["HANG"]
            tried = sum(v for k, v in answers.items() if k != "health unanswered")
            print(
                f"cases tried: {tried} ({len(corpus)} cases x {parsed.rounds} rounds, {parsed.concurrency} in flight, {elapsed:.1f} s)"
            )
            print(f"refused with the right reason: {tried - len(wrong)}")
            print(f"wrong answers: {len(wrong)}")
            for line in sorted(set(wrong)):
                print(f"  {line}")
            print(f"hangs: {hangs}")
            print(
                f"health unanswered: {answers['health unanswered']}; slowest health check {slowest_health * 1000:.0f} ms"
            )
            print(f"server restarts: {restarts}; chain restarts: {chain_restarts}")
            print(
                f"lost jobs: {len(lost)}; stranded jobs: {len(stranded)} (of {len(valid)} valid jobs run beside; {len(hostile_jobs)} accepted hostile)"
            )
            print(f"server RSS before/after: {rss_before / 1e6:.1f} / {rss_after / 1e6:.1f} MB")
            bad = (
                len(wrong)
                + hangs
                + answers["health unanswered"]
                + restarts
                + chain_restarts
                + len(lost)
                + len(stranded)
            )
            return 1 if bad else 0
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()


if __name__ == "__main__":
    sys.exit(main())
