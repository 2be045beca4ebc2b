"""Drives many concurrent clients, valid and invalid, against one QuantizeService on loopback.

    python bench/load.py [--clients 200] [--channels 4] [--ops 4] [--valid-creates 24] [--seconds 180]

Starts `quantledger serve quantize` (as the tests do) in a fresh data dir with a tiny synthetic model,
then runs --clients grpc.aio clients over --channels channels, each making --ops calls drawn with a
fixed seed from: a valid create (at most --valid-creates over the run), invalid creates (unknown
type, missing source, a path outside the roots, a 5 MiB message), watches (the first snapshots, then
the stream is closed: past QUANTLEDGER_MAX_WATCH_STREAMS open at once they are TOO_MANY_STREAMS),
lists (valid, negative page size, a forged token), gets of bad names, cancels (of created jobs and of
unknown ones). When the installed CLI has `quantledger tokens create` (API tokens, issue 12) the server
runs with `--auth tokens` and every call carries a valid token, except a share with an invalid one.

Every call names the answers ("CODE/REASON") it may get. Prints: requests served, refused by
code+reason, unexpected answers (any answer outside a call's set, flagged), server RSS before and
after, and jobs lost: every created job must be in the listing at the end, in a final state or still
queued or running. Bounded in count (--clients times --ops calls) and time (--seconds); loopback only.
Exit status 1 when an unexpected answer or a lost job is seen.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
import psutil  # noqa: E402
from conftest import error_reason, start_server  # noqa: E402

from quantledger.testing.synthetic_model import write_llama_gguf  # noqa: E402
from quantledger.v1 import quantize_service_pb2 as pb  # noqa: E402
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc  # noqa: E402

FINAL = {pb.QuantizeJob.STATE_SUCCEEDED, pb.QuantizeJob.STATE_FAILED, pb.QuantizeJob.STATE_CANCELLED}
ALIVE = {pb.QuantizeJob.STATE_QUEUED, pb.QuantizeJob.STATE_RUNNING}


@dataclass
class Tally:
    served: Counter[str] = field(default_factory=Counter)  # op -> calls answered OK
    refused: Counter[str] = field(default_factory=Counter)  # CODE/REASON -> count
    unexpected: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    valid_creates_left: int = 0


def answer_of(exc: grpc.RpcError) -> str:
    try:
        return f"{exc.code().name}/{error_reason(exc)}"
    except AssertionError:
        return f"{exc.code().name}/(no reason)"


def tokens_supported() -> bool:
    """Whether this build has API tokens (`quantledger tokens create`), issue 12's authentication."""
    done = subprocess.run(
        [sys.executable, "-m", "quantledger.cli.main", "tokens", "create", "--help"], capture_output=True, text=True
    )
    return done.returncode == 0


def create_token(home: pathlib.Path, name: str) -> str:
    """A token from `quantledger tokens create` (its last printed line, or the "token" of its JSON)."""
    env = dict(os.environ, QUANTLEDGER_HOME=str(home))
    done = subprocess.run(
        [sys.executable, "-m", "quantledger.cli.main", "tokens", "create", name],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    import json

    try:
        return str(json.loads(done.stdout)["token"])
    except (ValueError, KeyError, TypeError):
        return done.stdout.strip().splitlines()[-1].split()[-1]


class Client:
    def __init__(self, stub: pb_grpc.QuantizeServiceStub, tally: Tally, args: argparse.Namespace, metadata) -> None:
        self.stub, self.tally, self.args, self.metadata = stub, tally, args, metadata

    async def call(self, op: str, expect: set[str], run: Callable[[], Awaitable[object]]) -> object:
        try:
            result = await run()
        except grpc.RpcError as exc:
            got = answer_of(exc)
            if got in expect:
                self.tally.refused[got] += 1
            else:
                self.tally.unexpected.append(f"{op}: {got} {exc.details()[:120]}")
            return None
        if "OK" in expect:
            self.tally.served[op] += 1
        else:
            self.tally.unexpected.append(f"{op}: OK where {sorted(expect)} was due")
        return result

    def job(self, source: str, types: list[str]) -> pb.CreateQuantizeJobRequest:
        options = pb.QuantizeOptions(skip_quality=True)
        return pb.CreateQuantizeJobRequest(job=pb.QuantizeJob(source=source, quant_types=types, options=options))

    async def op(self, kind: str, rng: random.Random) -> None:
        s, md, deadline = self.stub, self.metadata, self.args.deadline
        if kind == "create" and self.tally.valid_creates_left > 0:
            self.tally.valid_creates_left -= 1
            job = await self.call(
                "create",
                {"OK"},
                lambda: s.CreateQuantizeJob(self.job(self.args.model, ["Q8_0"]), metadata=md, timeout=deadline),
            )
            if job is not None:
                self.tally.created.append(job.name)  # type: ignore[attr-defined]
        elif kind in ("create", "create-invalid"):
            source, types, expect = rng.choice(
                [
                    (self.args.model, ["NOT_A_TYPE"], "INVALID_ARGUMENT/UNKNOWN_QUANT_TYPE"),
                    (self.args.model + ".missing", ["Q8_0"], "NOT_FOUND/SOURCE_NOT_FOUND"),
                    ("/etc/passwd", ["Q8_0"], "PERMISSION_DENIED/PATH_NOT_ALLOWED"),
                    ("/" + "a" * (5 << 20), ["Q8_0"], "RESOURCE_EXHAUSTED/(no reason)"),
                ]
            )
            await self.call(
                "create", {expect}, lambda: s.CreateQuantizeJob(self.job(source, types), metadata=md, timeout=deadline)
            )
        elif kind == "watch" and self.tally.created:
            name = rng.choice(self.tally.created)

            async def watch() -> None:
                stream = s.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=name), metadata=md, timeout=deadline)
                try:
                    async for _ in stream:
                        break
                finally:
                    stream.cancel()

            await self.call("watch", {"OK", "RESOURCE_EXHAUSTED/TOO_MANY_STREAMS"}, watch)
        elif kind == "list" or kind == "watch":
            size, token, expect = rng.choice(
                [
                    (50, "", "OK"),
                    (-1, "", "INVALID_ARGUMENT/INVALID_ARGUMENT"),
                    (10, "forged" * 6, "INVALID_ARGUMENT/INVALID_ARGUMENT"),
                ]
            )
            request = pb.ListQuantizeJobsRequest(page_size=size, page_token=token)
            await self.call("list", {expect}, lambda: s.ListQuantizeJobs(request, metadata=md, timeout=deadline))
        elif kind == "get-invalid":
            name = rng.choice(["jobs/../../etc", "nonsense", "jobs/" + "x" * 5000])
            await self.call(
                "get",
                {"INVALID_ARGUMENT/INVALID_ARGUMENT"},
                lambda: s.GetQuantizeJob(pb.GetQuantizeJobRequest(name=name), metadata=md, timeout=deadline),
            )
        elif kind == "cancel" and self.tally.created:
            name = rng.choice(self.tally.created)
            await self.call(
                "cancel", {"OK", "FAILED_PRECONDITION/JOB_ALREADY_FINISHED"},
                lambda: s.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=name), metadata=md, timeout=deadline),
            )  # fmt: skip
        else:  # cancel before any job exists: an unknown job
            request = pb.CancelQuantizeJobRequest(name="jobs/" + "0" * 32)
            await self.call(
                "cancel",
                {"NOT_FOUND/JOB_NOT_FOUND", "INVALID_ARGUMENT/INVALID_ARGUMENT"},
                lambda: s.CancelQuantizeJob(request, metadata=md, timeout=deadline),
            )


async def drive(address: str, args: argparse.Namespace, tally: Tally, tokens: tuple[str, str] | None) -> float:
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels)
    ]
    kinds = ["create", "create-invalid", "watch", "watch", "list", "get-invalid", "cancel"]
    started = time.monotonic()

    async def one(index: int) -> None:
        rng = random.Random(1000 + index)
        metadata: tuple[tuple[str, str], ...] = ()
        expect_auth: set[str] | None = None
        if tokens is not None:
            good, bad = tokens
            if index % 10 == 9:
                # refused as invalid, or, once this address has spent its failed attempts, without checking
                expect_auth = {"UNAUTHENTICATED/TOKEN_INVALID", "RESOURCE_EXHAUSTED/TOO_MANY_ATTEMPTS"}
                metadata = (("authorization", f"Bearer {bad}"),)
            else:
                metadata = (("authorization", f"Bearer {good}"),)
        client = Client(pb_grpc.QuantizeServiceStub(channels[index % len(channels)]), tally, args, metadata)
        request = pb.ListQuantizeJobsRequest(page_size=10)
        for _ in range(args.ops):
            if expect_auth is not None:
                await client.call(
                    "list-bad-token",
                    expect_auth,
                    lambda: client.stub.ListQuantizeJobs(request, metadata=metadata, timeout=args.deadline),
                )
                continue
            await client.op(rng.choice(kinds), rng)

    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.clients))), timeout=args.seconds)
    finally:
        for channel in channels:
            await channel.close()
    return time.monotonic() - started


def final_listing(address: str, metadata, drain: float) -> dict[str, int]:
    """Every job's state, paged through the listing once the jobs have had ``drain`` seconds to end."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.QuantizeServiceStub(channel)
        deadline = time.monotonic() + drain
        while True:
            states: dict[str, int] = {}
            token = ""
            while True:
                page = stub.ListQuantizeJobs(
                    pb.ListQuantizeJobsRequest(page_size=100, page_token=token), metadata=metadata
                )
                states.update({job.name: job.state for job in page.jobs})
                token = page.next_page_token
                if not token:
                    break
            if all(state in FINAL for state in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--ops", type=int, default=4, help="calls per client")
    parser.add_argument("--valid-creates", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=180, help="bound on the whole load phase")
    parser.add_argument("--deadline", type=float, default=60, help="per call")
    parser.add_argument("--drain", type=float, default=120, help="seconds for created jobs to end afterwards")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ql-load-") as tmp:
        root = pathlib.Path(tmp)
        models, home = root / "models", root / "home"
        models.mkdir()
        args.model = str(models / "tiny-f16.gguf")
        write_llama_gguf(args.model, n_embd=256, n_ff=512, n_layer=1, seed=7)
        auth = tokens_supported()
        command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", "0"]
        extra = {"QUANTLEDGER_MAX_PARALLEL_JOBS": "2"}
        tokens = None
        if auth:
            home.mkdir()
            tokens = (create_token(home, "load-bench"), "ql_" + "0" * 40)
        from conftest import free_port

        port = free_port()
        command[-1] = str(port)
        if auth:
            command.append("--auth=tokens")
        server = start_server(home, [models, home], port=port, command=command, extra_env=extra)
        try:
            process = psutil.Process(server.process.pid)
            rss_before = process.memory_info().rss
            tally = Tally(valid_creates_left=args.valid_creates)
            seconds = asyncio.run(drive(server.address, args, tally, tokens))
            rss_after = process.memory_info().rss
            metadata = (("authorization", f"Bearer {tokens[0]}"),) if tokens else ()
            states = final_listing(server.address, metadata, args.drain)
        finally:
            server.stop()

    lost = [name for name in tally.created if name not in states]
    stranded = [name for name in tally.created if name in states and states[name] not in FINAL | ALIVE]
    by_state = Counter(pb.QuantizeJob.State.Name(states[name]) for name in tally.created if name in states)
    calls = sum(tally.served.values()) + sum(tally.refused.values()) + len(tally.unexpected)
    uses_tokens = "yes" if auth else "not in this build"
    print(f"clients {args.clients} over {args.channels} channels, {args.ops} calls each; tokens: {uses_tokens}")
    print(f"calls answered: {calls} in {seconds:.1f} s")
    print(f"served: {sum(tally.served.values())} ({', '.join(f'{k} {v}' for k, v in sorted(tally.served.items()))})")
    print(f"refused with the right code: {sum(tally.refused.values())}")
    for answer, count in sorted(tally.refused.items()):
        print(f"  {answer}: {count}")
    print(f"unexpected answers: {len(tally.unexpected)}")
    for line in tally.unexpected[:10]:
        print(f"  {line}")
    print(f"jobs created: {len(tally.created)}, at the end: {dict(by_state)}")
    print(f"jobs lost: {len(lost)}, stranded: {len(stranded)}")
    print(f"server RSS before / after: {rss_before / 1e6:.1f} / {rss_after / 1e6:.1f} MB")
    return 1 if tally.unexpected or lost or stranded else 0


if __name__ == "__main__":
    sys.exit(main())
