"""API tokens and authentication: the CLI's token commands, and real servers started with ``--auth tokens``
refusing calls without a valid token (each with its code and reason), open health and reflection, the
attempt limit, the audit log, and a store that holds no token."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from conftest import RunningServer, error_reason, free_port, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quantledger.grpc_api.auth import current_principal
from quantledger.grpc_api.authn import AuthenticationInterceptor, TokenAuthenticator
from quantledger.security.attempts import AttemptLimiter
from quantledger.security.audit import AuditLog
from quantledger.security.tokens import TokenStore
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

A_WRONG_SECRET = "A" * 43


def cli(home: pathlib.Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {key: value for key, value in os.environ.items() if key != "QUANTLEDGER_TOKEN"}
    full_env.update(QUANTLEDGER_HOME=str(home), **(env or {}))
    argv = [sys.executable, "-m", "quantledger.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=full_env)


def create_token(home: pathlib.Path, name: str, *flags: str) -> str:
    made = cli(home, "tokens", "create", name, *flags)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("qlt_") and "\n" not in token
    return token


def list_tokens(home: pathlib.Path) -> dict[str, dict[str, object]]:
    listed = cli(home, "tokens", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {entry["name"]: entry for entry in json.loads(listed.stdout)["tokens"]}


def call(server: RunningServer, token: str | None) -> pb.ListQuantTypesResponse:
    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    with server.channel() as channel:
        reply: pb.ListQuantTypesResponse = pb_grpc.QuantizeServiceStub(channel).ListQuantTypes(
            pb.ListQuantTypesRequest(), metadata=metadata, timeout=30
        )
        return reply


def refusal(server: RunningServer, token: str | None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(server, token)
    return caught.value.code(), error_reason(caught.value)


def audit_entries(home: pathlib.Path) -> list[dict[str, object]]:
    path = home / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("auth-home")


@pytest.fixture(scope="module")
def secured(home: pathlib.Path) -> Iterator[RunningServer]:
    """A quantize server with ``--auth tokens`` and a generous attempt limit (every test here shares 127.0.0.1)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "quantledger.cli.main",
        "serve",
        "quantize",
        "--auth",
        "tokens",
        "--port",
        str(port),
    ]
    running = start_server(
        home, [home], port=port, command=command, extra_env={"QUANTLEDGER_AUTH_FAILURES_PER_MINUTE": "1000"}
    )
    yield running
    running.stop()


def test_tokens_create_list_revoke_through_the_cli(tmp_path: pathlib.Path) -> None:
    token = create_token(
        tmp_path, "alice", "--expires", "30d", "--root", str(tmp_path), "--max-running", "2", "--max-kept-bytes", "5G"
    )
    create_token(tmp_path, "ops", "--admin")
    listed = list_tokens(tmp_path)
    assert set(listed) == {"alice", "ops"}
    alice = listed["alice"]
    assert alice["admin"] is False and listed["ops"]["admin"] is True
    assert alice["expires"] and listed["ops"]["expires"] is None
    assert alice["revoked"] is None and alice["last_used"] is None and alice["created"]
    assert alice["allowed_roots"] == [str(tmp_path.resolve())]
    assert alice["max_running_jobs"] == 2 and alice["max_kept_bytes"] == 5 << 30
    assert token.split("_")[1] == alice["id"]
    shown = cli(tmp_path, "tokens", "list")
    assert "alice" in shown.stdout and token not in shown.stdout and token.split("_", 2)[2] not in shown.stdout

    taken = cli(tmp_path, "tokens", "create", "alice")
    assert taken.returncode == 1 and "TOKEN_NAME_TAKEN" in taken.stderr
    assert cli(tmp_path, "tokens", "revoke", "alice").returncode == 0
    assert list_tokens(tmp_path)["alice"]["revoked"]
    again = cli(tmp_path, "tokens", "revoke", "alice")
    assert again.returncode == 1 and "TOKEN_NOT_FOUND" in again.stderr
    assert create_token(tmp_path, "alice") != token  # a revoked name can be given a new token
    bad = cli(tmp_path, "tokens", "create", "bob", "--expires", "soon")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr

    store = tmp_path / "keys" / "api-tokens.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600


def test_a_call_without_a_valid_token_is_unauthenticated(secured: RunningServer, home: pathlib.Path) -> None:
    token = create_token(home, "carol")
    assert call(secured, token).quant_types
    ident = token.split("_")[1]
    for wrong in (
        None,
        "",
        "not-a-token",
        f"qlt_{ident}_{A_WRONG_SECRET}",
        f"qlt_{'0' * 16}_{A_WRONG_SECRET}",
        token + "x",
    ):
        assert refusal(secured, wrong) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"), wrong
    with secured.channel() as channel:  # a streaming method is guarded too
        stream = pb_grpc.QuantizeServiceStub(channel).WatchQuantizeJob(pb.WatchQuantizeJobRequest(name="jobs/x"))
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stream))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED and error_reason(caught.value) == "TOKEN_INVALID"
    assert list_tokens(home)["carol"]["last_used"]


def test_the_cli_sends_the_token_from_a_file_or_the_environment(
    secured: RunningServer, home: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    token = create_token(home, "dave")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    server = ["--server", secured.address]
    before = cli(home, "--token-file", str(token_file), "quant-types", *server)
    after = cli(home, "quant-types", *server, "--token-file", str(token_file))
    from_env = cli(home, "quant-types", *server, env={"QUANTLEDGER_TOKEN": token})
    for done in (before, after, from_env):
        assert done.returncode == 0, done.stderr
        assert "Q8_0" in done.stdout and token not in done.stdout + done.stderr
    refused = cli(home, "quant-types", *server)
    assert refused.returncode == 1 and "TOKEN_INVALID" in refused.stderr
    wrong = cli(home, "--json", "jobs", "list", *server, env={"QUANTLEDGER_TOKEN": f"{token[:-3]}abc"})
    assert wrong.returncode == 1 and json.loads(wrong.stdout)["error"]["reason"] == "TOKEN_INVALID"
    assert token[:-3] not in wrong.stdout + wrong.stderr


def test_a_token_revoked_while_the_server_runs_is_refused_at_once(secured: RunningServer, home: pathlib.Path) -> None:
    token = create_token(home, "erin")  # made after the server started: no restart needed
    assert call(secured, token).quant_types
    assert cli(home, "tokens", "revoke", "erin").returncode == 0
    assert refusal(secured, token) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


def test_an_expired_token_is_token_expired(secured: RunningServer, home: pathlib.Path) -> None:
    token = create_token(home, "frank", "--expires", "2s")
    expires = time.time() + 2
    try:
        call(secured, token)  # valid until it expires (unless this machine took the whole 2 s)
    except grpc.RpcError as exc:
        assert time.time() >= expires and error_reason(exc) == "TOKEN_EXPIRED"
    deadline = time.monotonic() + 30
    while True:
        try:
            call(secured, token)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and error_reason(exc) == "TOKEN_EXPIRED"
            break
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(0.2)
    expired_file = home / "expired-token"
    expired_file.write_text(token)
    shown = cli(home, "--token-file", str(expired_file), "quant-types", "--server", secured.address)
    assert shown.returncode == 1 and "TOKEN_EXPIRED" in shown.stderr


def test_health_and_reflection_stay_open(secured: RunningServer) -> None:
    with secured.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "quantledger.v1.QuantizeService" in names
    assert "authentication: tokens" in secured.output()


def test_the_data_dir_holds_no_token_and_the_audit_log_no_secret(secured: RunningServer, home: pathlib.Path) -> None:
    token = create_token(home, "grace")
    assert call(secured, token).quant_types
    wrong = f"{token[:-4]}zzzz"
    assert refusal(secured, wrong) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    secret = token.split("_", 2)[2]
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and wrong.split("_", 2)[2].encode() not in data, path
    entries = audit_entries(home)
    assert stat.S_IMODE((home / "audit.log").stat().st_mode) == 0o600
    mine = [e for e in entries if e.get("token_id") == token.split("_")[1]]
    assert mine and mine[-1]["reason"] == "TOKEN_INVALID"
    assert mine[-1]["method"] == "/quantledger.v1.QuantizeService/ListQuantTypes"
    assert str(mine[-1]["peer"]).startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert all(set(e) >= {"time", "event", "principal", "peer", "method", "reason"} for e in entries)


def test_failed_attempts_beyond_the_limit_are_too_many_attempts(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "limited"
    home.mkdir()
    token, neighbour = create_token(home, "heidi"), create_token(home, "ivy")
    port = free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", str(port)]
    env = {"QUANTLEDGER_AUTH": "tokens", "QUANTLEDGER_AUTH_FAILURES_PER_MINUTE": "3"}
    server = start_server(home, [home], port=port, command=command, extra_env=env)
    try:
        wrong = f"{token[:-4]}zzzz"
        # failures that need no hash (malformed, none, an unknown id) spend the address's attempts
        for attempt in ("malformed", None, f"qlt_{'0' * 16}_{A_WRONG_SECRET}"):
            assert refusal(server, attempt) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
        for attempt in ("malformed", None):
            assert refusal(server, attempt) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS")
        call(server, neighbour)  # a valid token from the same address still gets in
        # guesses at a real token's secret spend that token's own attempts from this address, so the
        # neighbours' failures above lock out neither the guesser nor a valid token
        for _ in range(3):
            assert refusal(server, wrong) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
        # over that limit nothing new is checked: neither a guess nor the valid token not seen before
        for attempt in (wrong, token):
            assert refusal(server, attempt) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS")
    finally:
        server.stop()
    entries = audit_entries(home)
    assert [e["reason"] for e in entries] == ["TOKEN_INVALID"] * 3 + ["TOO_MANY_ATTEMPTS"] + ["TOKEN_INVALID"] * 3
    assert entries[3]["suppressed"] == 0  # the next ones of the minute are counted, not written
    assert all(token.split("_", 2)[2] not in json.dumps(e) for e in entries)


def test_the_interceptor_sets_the_principal_in_the_handlers_own_task(tmp_path: pathlib.Path) -> None:
    """The principal a token's settings describe reaches unary and streaming handlers (in-process server)."""
    store = TokenStore.in_home(tmp_path)
    token, _ = store.create("ivan", allowed_roots=(str(tmp_path),), output_dirs=(str(tmp_path / "out"),))

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return current_principal().name.encode()

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(2):
            principal = current_principal()
            yield f"{principal.name} {principal.via} {principal.allowed_roots} {principal.output_dirs}".encode()

    async def scenario() -> tuple[bytes, list[bytes], grpc.StatusCode]:
        limiter = AttemptLimiter(10)
        interceptor = AuthenticationInterceptor(
            [TokenAuthenticator(store, limiter)], AuditLog.in_home(tmp_path), limiter
        )
        server = grpc.aio.server(interceptors=[interceptor])
        handlers = {
            "Who": grpc.unary_unary_rpc_method_handler(unary),
            "Watch": grpc.unary_stream_rpc_method_handler(stream),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("probe.Probe", handlers)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                metadata = (("authorization", f"Bearer {token}"),)
                who = await channel.unary_unary("/probe.Probe/Who")(b"", metadata=metadata)
                watched = [item async for item in channel.unary_stream("/probe.Probe/Watch")(b"", metadata=metadata)]
                try:
                    await channel.unary_unary("/probe.Probe/Who")(b"")
                    refused = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    refused = exc.code()
        finally:
            await server.stop(None)
        return who, watched, refused

    who, watched, refused = asyncio.run(scenario())
    assert who == b"ivan"
    assert watched == [f"ivan token {(tmp_path,)} {(tmp_path / 'out',)}".encode()] * 2
    assert refused == grpc.StatusCode.UNAUTHENTICATED


def test_an_unknown_auth_mode_is_config_invalid(tmp_path: pathlib.Path) -> None:
    started = cli(tmp_path, "serve", "quantize", "--port", str(free_port()), env={"QUANTLEDGER_AUTH": "maybe"})
    assert started.returncode == 1 and "CONFIG_INVALID" in started.stderr


def test_concurrent_first_calls_with_one_token_share_one_check(tmp_path: pathlib.Path) -> None:
    """Fifty clients starting at once with one valid token: none is refused, though the attempt limit is 3
    (each would otherwise take an attempt while the first hash runs)."""
    home = tmp_path / "crowd"
    home.mkdir()
    token = create_token(home, "crowd")
    port = free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", str(port)]
    env = {"QUANTLEDGER_AUTH": "tokens", "QUANTLEDGER_AUTH_FAILURES_PER_MINUTE": "3"}
    server = start_server(home, [home], port=port, command=command, extra_env=env)

    async def crowd() -> list[object]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.QuantizeServiceStub(channel)
            calls = [
                stub.ListQuantTypes(
                    pb.ListQuantTypesRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=60
                )
                for _ in range(50)
            ]
            return list(await asyncio.gather(*calls, return_exceptions=True))

    try:
        answers = asyncio.run(crowd())
    finally:
        server.stop()
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert refused == [], {(a.code(), error_reason(a)) for a in refused}


def test_a_damaged_token_store_refuses_calls_with_config_invalid(tmp_path: pathlib.Path) -> None:
    """Fail closed and say why: a store that does not parse is CONFIG_INVALID, never UNKNOWN or a guess."""
    home = tmp_path / "damaged"
    home.mkdir()
    token = create_token(home, "judy")
    port = free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", str(port)]
    server = start_server(home, [home], port=port, command=command, extra_env={"QUANTLEDGER_AUTH": "tokens"})
    try:
        assert call(server, token).quant_types
        store = home / "keys" / "api-tokens.json"
        store.write_text('{"tokens": [{"id": ')  # cut short, as by a full disk or a bad hand edit
        assert refusal(server, token) == (grpc.StatusCode.FAILED_PRECONDITION, "CONFIG_INVALID")
        with server.channel() as channel:  # health stays open
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()
    listed = cli(home, "tokens", "list")
    assert listed.returncode == 1 and "CONFIG_INVALID" in listed.stderr and "damaged" in listed.stderr
