"""Transport security: TLS and mutual TLS on real servers, certificate reload, and the refusal of an
unsafe bind (docs/SECURITY.md "Transport")."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import grpc
import pytest
from conftest import Models, RunningServer, free_port, start_server
from test_cli import cli
from tls_certs import CertificateAuthority, Issued

from quantledger.cli import main as cli_main
from quantledger.config import Settings
from quantledger.errors import CertificateInvalid
from quantledger.grpc_api.auth import current_principal
from quantledger.grpc_api.authn import interceptors_for
from quantledger.grpc_api.tls import ServerTls, principal_from_peer
from quantledger.security.listen_policy import is_loopback
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Pki:
    folder: pathlib.Path
    server_ca: pathlib.Path  # signed the server's certificate: what clients trust
    client_ca: pathlib.Path  # signs client certificates: what the server trusts (--tls-client-ca)
    server_authority: CertificateAuthority
    server: Issued
    alice: tuple[pathlib.Path, pathlib.Path]  # client certificate of the client CA; an admin where listed
    bob: tuple[pathlib.Path, pathlib.Path]  # client certificate of the client CA
    mallory: tuple[pathlib.Path, pathlib.Path]  # client certificate of a CA nobody trusts

    def server_files(self, folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
        """A copy of the server's certificate and key of its own (tests replace them)."""
        folder.mkdir(parents=True, exist_ok=True)
        return self.server.write(folder, "server")

    def credentials(self, client: tuple[pathlib.Path, pathlib.Path] | None = None) -> grpc.ChannelCredentials:
        cert, key = client if client else (None, None)
        return grpc.ssl_channel_credentials(
            root_certificates=self.server_ca.read_bytes(),
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    server_authority = CertificateAuthority("quantledger test server CA")
    client_authority = CertificateAuthority("quantledger test client CA")
    rogue = CertificateAuthority("a CA nobody trusts")
    return Pki(
        folder=folder,
        server_ca=server_authority.write(folder / "server-ca.pem"),
        client_ca=client_authority.write(folder / "client-ca.pem"),
        server_authority=server_authority,
        server=server_authority.issue("localhost", 1, server=True),
        alice=client_authority.issue("alice", 2).write(folder, "alice"),
        bob=client_authority.issue("bob", 3).write(folder, "bob"),
        mallory=rogue.issue("alice", 4).write(folder, "mallory"),
    )


def tls_server(
    home: pathlib.Path,
    pki: Pki,
    roots: list[pathlib.Path],
    *extra: str,
    client: tuple[pathlib.Path, pathlib.Path] | None = None,
) -> tuple[RunningServer, pathlib.Path, pathlib.Path]:
    """`serve quantize` with TLS on its own copy of the server certificate; (server, cert, key)."""
    cert, key = pki.server_files(home / "tls")
    port = free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", str(port)]
    command += ["--tls-cert", str(cert), "--tls-key", str(key), *extra]
    server = start_server(home, roots, port=port, command=command, credentials=pki.credentials(client))
    return server, cert, key


def served_fingerprint(server: RunningServer, pki: Pki) -> str:
    """SHA-256 of the certificate a new connection gets, read with a raw TLS handshake."""
    context = ssl.create_default_context(cafile=str(pki.server_ca))
    context.set_alpn_protocols(["h2"])
    host, port = server.address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def wait_until(check, timeout: float = 30, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------ TLS


def test_a_tls_server_serves_clients_that_trust_its_ca_and_others_get_a_clear_error(
    tmp_path: pathlib.Path, pki: Pki, models: Models
) -> None:
    server, _, _ = tls_server(tmp_path / "home", pki, [models.root])
    try:
        assert "TLS: on" in server.output() and "client certificates" not in server.output()
        # a Python client with the test CA
        types = server.stub().ListQuantTypes(pb.ListQuantTypesRequest(), timeout=30)
        assert any(t.name == "Q8_0" for t in types.quant_types)
        # the CLI: --tls-ca after the command, before it, or from the environment
        ca = str(pki.server_ca)
        assert cli("quant-types", "--json", "--tls-ca", ca, server=server).returncode == 0
        assert cli("--tls-ca", ca, "quant-types", "--json", server=server).returncode == 0
        from_env = cli("quant-types", "--json", server=server, env={"QUANTLEDGER_TLS_CA": ca})
        assert from_env.returncode == 0, from_env.stderr

        # a CA that did not sign the server's certificate
        wrong = cli("quant-types", "--tls-ca", str(pki.client_ca), server=server)
        assert wrong.returncode == 1
        assert "SERVER_UNAVAILABLE: TLS handshake failed: CERTIFICATE_VERIFY_FAILED" in wrong.stderr
        assert "--tls-ca" in wrong.stderr
        # plaintext (no CA given, or --insecure over the environment's CA)
        for plain in (
            cli("quant-types", server=server),
            cli("quant-types", "--insecure", server=server, env={"QUANTLEDGER_TLS_CA": ca}),
        ):
            assert plain.returncode == 1
            assert "SERVER_UNAVAILABLE" in plain.stderr and "pass --tls-ca FILE" in plain.stderr
        # a Python client that trusts only the system's roots
        channel = grpc.secure_channel(server.address, grpc.ssl_channel_credentials())
        with channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.QuantizeServiceStub(channel).ListQuantTypes(pb.ListQuantTypesRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "handshake failed" in (refused.value.details() or "").lower()
    finally:
        server.stop()


def test_mutual_tls_admits_only_certificates_of_the_client_ca(tmp_path: pathlib.Path, pki: Pki, models: Models) -> None:
    server, _, _ = tls_server(
        tmp_path / "home", pki, [models.root], "--tls-client-ca", str(pki.client_ca), client=pki.alice
    )
    try:
        assert "TLS: on (client certificates required)" in server.output()
        ca = ["--tls-ca", str(pki.server_ca)]
        alice = cli("quant-types", "--json", *ca, "--tls-cert", str(pki.alice[0]), "--tls-key", str(pki.alice[1]),
                    server=server)  # fmt: skip
        assert alice.returncode == 0, alice.stderr
        from_env = cli("quant-types", "--json", *ca, server=server,
                       env={"QUANTLEDGER_TLS_CLIENT_CERT": str(pki.bob[0]), "QUANTLEDGER_TLS_CLIENT_KEY": str(pki.bob[1])})  # fmt: skip
        assert from_env.returncode == 0, from_env.stderr

        nobody = cli("quant-types", *ca, server=server)
        assert nobody.returncode == 1
        assert "SERVER_UNAVAILABLE: TLS handshake failed" in nobody.stderr and "--tls-cert" in nobody.stderr
        mallory = cli("quant-types", *ca, "--tls-cert", str(pki.mallory[0]), "--tls-key", str(pki.mallory[1]),
                      server=server)  # fmt: skip
        assert mallory.returncode == 1 and "SERVER_UNAVAILABLE: TLS handshake failed" in mallory.stderr
        # a Python client without a certificate
        with grpc.secure_channel(server.address, pki.credentials()) as channel, pytest.raises(grpc.RpcError) as no:
            pb_grpc.QuantizeServiceStub(channel).ListQuantTypes(pb.ListQuantTypesRequest(), timeout=10)
        assert no.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_the_verified_client_certificate_is_the_principal_of_each_call(tmp_path: pathlib.Path, pki: Pki) -> None:
    """A minimal grpc.aio server with the service's TLS and interceptor: what current_principal() says."""
    cert, key = pki.server_files(tmp_path / "tls")

    def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        principal = current_principal()
        return f"{principal.name} admin={principal.admin} via={principal.via}".encode()

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return who(request, context)

    async def stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        for _ in range(2):
            yield who(request, context)

    async def direct(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return repr(principal_from_peer(context)).encode()

    handlers = grpc.method_handlers_generic_handler(
        "test.Who",
        {
            "Me": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Direct": grpc.unary_unary_rpc_method_handler(direct),
        },
    )

    async def serve_and_ask() -> dict[str, object]:
        answers: dict[str, object] = {}
        for mutual in (True, False):
            settings = Settings(
                home=tmp_path, allowed_roots=(tmp_path,), tls_cert=str(cert), tls_key=str(key),
                tls_client_ca=str(pki.client_ca) if mutual else "", tls_admins=("alice",),
            )  # fmt: skip
            tls = ServerTls(settings)
            interceptors = interceptors_for(settings)  # empty without a client CA
            server = grpc.aio.server(interceptors=interceptors)
            server.add_generic_rpc_handlers((handlers,))
            port = server.add_secure_port("127.0.0.1:0", tls.credentials())
            await server.start()
            try:
                clients = {"alice": pki.alice, "bob": pki.bob, "mallory": pki.mallory, "nobody": None}
                for name, client in clients.items():
                    key_ = f"{'mtls' if mutual else 'tls'}:{name}"
                    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", pki.credentials(client)) as channel:
                        try:
                            if mutual:
                                answers[key_] = (await channel.unary_unary("/test.Who/Me")(b"", timeout=10)).decode()
                                replies = channel.unary_stream("/test.Who/Stream")(b"", timeout=10)
                                answers[key_ + ":stream"] = [r.decode() async for r in replies]
                            else:
                                answers[key_] = (
                                    await channel.unary_unary("/test.Who/Direct")(b"", timeout=10)
                                ).decode()
                        except grpc.aio.AioRpcError as exc:
                            answers[key_] = exc.code()
            finally:
                await server.stop(None)
        return answers

    answers = asyncio.run(serve_and_ask())
    assert answers["mtls:alice"] == "alice admin=True via=mtls"
    assert answers["mtls:alice:stream"] == ["alice admin=True via=mtls"] * 2
    assert answers["mtls:bob"] == "bob admin=False via=mtls"
    assert answers["mtls:bob:stream"] == ["bob admin=False via=mtls"] * 2
    assert answers["mtls:mallory"] == grpc.StatusCode.UNAVAILABLE  # refused in the handshake
    assert answers["mtls:nobody"] == grpc.StatusCode.UNAVAILABLE
    # without a client CA no client certificate is asked for: no principal from the peer
    assert answers["tls:nobody"] == "None"
    assert answers["tls:alice"] == "None"


# ------------------------------------------------------------------ reload


def test_new_certificates_reach_new_connections_while_an_open_watch_keeps_flowing(
    tmp_path: pathlib.Path, pki: Pki, models: Models
) -> None:
    home = tmp_path / "home"
    server, cert, key = tls_server(home, pki, [models.root, home])
    first = pki.server
    try:
        assert served_fingerprint(server, pki) == first.fingerprint
        with server.channel() as channel:
            stub = pb_grpc.QuantizeServiceStub(channel)
            job = stub.CreateQuantizeJob(
                pb.CreateQuantizeJobRequest(
                    job=pb.QuantizeJob(source=str(models.large), quant_types=["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"])
                ),
                timeout=120,
            )
            snapshots: list[pb.QuantizeJob] = []
            failures: list[BaseException] = []

            def watch() -> None:
                try:
                    for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=300):
                        snapshots.append(snapshot)
                except grpc.RpcError as exc:
                    failures.append(exc)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            wait_until(lambda: any(s.state == pb.QuantizeJob.STATE_RUNNING for s in snapshots), what="RUNNING")

            # 1. replace the files (a new key and certificate, as a renewal does): the next connection sees it
            second = pki.server_authority.issue("localhost", 10, server=True)
            staged = tmp_path / "staged"
            staged.mkdir()
            new_cert, new_key = second.write(staged, "server")
            os.replace(new_key, key)
            os.replace(new_cert, cert)
            seen = len(snapshots)
            assert served_fingerprint(server, pki) == second.fingerprint
            wait_until(lambda: "TLS reload (the files changed): now serving" in server.output(), what="reload log")
            # ... and the stream opened before keeps flowing on its connection
            wait_until(lambda: len(snapshots) > seen + 2, what="snapshots after the reload")
            assert not failures
            assert stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name), timeout=10).name == job.name

            # 2. SIGHUP: rewritten in place with the same size, inode and mtime, only a SIGHUP notices
            third = pki.server_authority.issue("localhost", 11, server=True, key=second.key)
            assert len(third.cert_pem) == len(second.cert_pem)
            before = os.stat(cert)
            with open(cert, "r+b") as file:
                file.write(third.cert_pem)
            os.utime(cert, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert served_fingerprint(server, pki) == second.fingerprint
            server.process.send_signal(signal.SIGHUP)
            wait_until(lambda: "TLS reload (SIGHUP): now serving" in server.output(), what="SIGHUP reload")
            assert served_fingerprint(server, pki) == third.fingerprint

            # 3. a bad certificate keeps the current one, and the log says why
            broken = staged / "broken.pem"
            broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
            os.replace(broken, cert)
            assert served_fingerprint(server, pki) == third.fingerprint
            wait_until(lambda: "refused, kept the current certificate" in server.output(), what="refusal log")
            mismatched = pki.server_authority.issue("localhost", 12, server=True)  # a key that is not the file's
            (staged / "mismatched.pem").write_bytes(mismatched.cert_pem)
            os.replace(staged / "mismatched.pem", cert)
            assert served_fingerprint(server, pki) == third.fingerprint
            wait_until(lambda: "is the key the certificate's?" in server.output(), what="mismatch log")
            assert len(snapshots) > seen and not failures

            stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name), timeout=30)
            watcher.join(60)
            assert not failures and snapshots[-1].state == pb.QuantizeJob.STATE_CANCELLED
        assert server.process.poll() is None  # SIGHUP reloads, it does not stop the server
    finally:
        server.stop()


def test_a_bad_certificate_at_start_is_certificate_invalid(tmp_path: pathlib.Path, pki: Pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("QUANTLEDGER_HOME", str(tmp_path / "home"))
    cert, key = pki.server_files(tmp_path / "tls")
    shutil.copy(pki.alice[1], key)  # a key that is not the certificate's
    status = cli("serve", "quantize", "--port", str(free_port()), "--tls-cert", str(cert), "--tls-key", str(key))
    assert status.returncode == 1
    assert "CERTIFICATE_INVALID" in status.stderr and "--tls-key" in status.stderr
    half = Settings(home=tmp_path, allowed_roots=(tmp_path,), tls_client_ca=str(pki.client_ca))
    with pytest.raises(CertificateInvalid, match="--tls-cert FILE and --tls-key FILE"):
        ServerTls(half)  # a client CA without a server certificate is no silent plaintext
    unreadable = dataclasses.replace(half, tls_cert=str(cert), tls_key=str(tmp_path / "missing.key"))
    with pytest.raises(CertificateInvalid, match=r"--tls-key .*cannot read it"):
        ServerTls(unreadable)


# ------------------------------------------------------------------ safe defaults


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.5", False), ("example.org", False)],
)  # fmt: skip
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _refusal(argv: list[str], capsys, monkeypatch, tmp_path: pathlib.Path, env: dict[str, str] | None = None) -> str:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("QUANTLEDGER_HOME", str(tmp_path / "home"))
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    assert cli_main.main(argv) == 1
    err: str = capsys.readouterr().err
    assert "INSECURE_LISTEN" in err
    assert not (tmp_path / "home" / "jobs.sqlite3").exists()  # refused before anything started
    return err


def test_a_non_loopback_bind_without_tls_and_authentication_refuses_to_start(
    tmp_path: pathlib.Path, pki: Pki, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    port = str(free_port())
    for argv in (["serve", "quantize", "--host", "0.0.0.0", "--port", port], ["up", "--host", "0.0.0.0"]):
        err = _refusal(argv, capsys, monkeypatch, tmp_path)
        for flag in ("--tls-cert", "--tls-key", "--auth tokens", "--tls-client-ca", "--insecure-listen"):
            assert flag in err, (flag, err)
    err = _refusal(["serve", "registry", "--port", port], capsys, monkeypatch, tmp_path, {"QUANTLEDGER_HOST": "::"})
    assert "--tls-cert" in err
    # TLS without authentication is still refused; it names what is missing only
    cert, key = pki.server_files(tmp_path / "tls")
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    err = _refusal(["serve", "quantize", "--host", "0.0.0.0", "--port", port, *tls], capsys, monkeypatch, tmp_path)
    assert "--auth tokens" in err and "--tls-client-ca" in err and "--tls-cert FILE" not in err
    # the embedded chain has neither: loopback only
    err = _refusal(["serve", "chain", "--host", "0.0.0.0", "--chain-port", port], capsys, monkeypatch, tmp_path)
    assert "embedded chain" in err and "--insecure-listen" in err
    # no abbreviation lowers the guard
    with pytest.raises(SystemExit):
        cli_main.main(["serve", "quantize", "--host", "0.0.0.0", "--insecure"])


def test_insecure_listen_starts_beyond_loopback_and_warns_on_every_start(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "registry", "--host", "0.0.0.0",
               "--port", str(port), "--insecure-listen"]  # fmt: skip
    for _ in range(2):
        server = start_server(home, [home], port=port, command=command)
        try:
            assert "TLS: off" in server.output()
        finally:
            assert server.stop() == 0
    warnings = [line for line in server.output().splitlines() if "WARNING" in line and "INSECURE" in line]
    assert len(warnings) == 2, server.output()
    assert "listening on 0.0.0.0 without TLS" in warnings[0]


def test_the_chain_beyond_loopback_only_with_insecure_listen(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ, QUANTLEDGER_HOME=str(home), QUANTLEDGER_LOG_LEVEL="INFO")
    port = str(free_port())
    argv = [sys.executable, "-m", "quantledger.cli.main", "serve", "chain", "--host", "0.0.0.0", "--chain-port", port,
            "--insecure-listen"]  # fmt: skip
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert "serving JSON-RPC" in line
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert "INSECURE: the embedded chain's JSON-RPC listens on 0.0.0.0" in err


def test_tokens_over_tls_refuse_without_a_token_and_serve_with_one(tmp_path: pathlib.Path, pki: Pki) -> None:
    """The multi-user setup beyond loopback: TLS and API tokens on one server; the CLI with --tls-ca and
    --token-file gets in, a TLS client without a token is UNAUTHENTICATED / TOKEN_INVALID."""
    from conftest import error_reason

    home = tmp_path / "tls-tokens"
    home.mkdir()
    made = subprocess.run(
        [sys.executable, "-m", "quantledger.cli.main", "tokens", "create", "erin"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "QUANTLEDGER_HOME": str(home)},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token_file = tmp_path / "erin.token"
    token_file.write_text(made.stdout)
    server, _cert, _key = tls_server(home, pki, [home], "--auth", "tokens")
    try:
        with grpc.secure_channel(server.address, pki.credentials(), options=[]) as channel:
            stub = pb_grpc.QuantizeServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListQuantTypes(pb.ListQuantTypesRequest(), timeout=30)
            assert (caught.value.code(), error_reason(caught.value)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "TOKEN_INVALID",
            )
            reply = stub.ListQuantTypes(
                pb.ListQuantTypesRequest(), metadata=[("authorization", f"Bearer {made.stdout.strip()}")], timeout=30
            )
            assert reply.quant_types
        listed = cli("--tls-ca", str(pki.server_ca), "--token-file", str(token_file), "jobs", "list", "--json",
                     "--server", server.address)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
    finally:
        server.stop()


def test_the_http_api_serves_https_with_the_servers_certificate(tmp_path: pathlib.Path, pki: Pki) -> None:
    """--http-port on a TLS server: HTTPS with the same certificate, plaintext HTTP refused; with client
    certificates alone (no tokens) HTTP calls cannot authenticate (TOKEN_INVALID), health stays open."""
    import json
    import urllib.error
    import urllib.request

    http_port = free_port()
    extra = ("--http-port", str(http_port), "--tls-client-ca", str(pki.client_ca))
    server, _, _ = tls_server(tmp_path / "home", pki, [tmp_path], *extra, client=pki.alice)
    trusted = ssl.create_default_context(cafile=str(pki.server_ca))
    base = f"https://localhost:{http_port}"
    try:
        with urllib.request.urlopen(f"{base}/api/v1/health", context=trusted, timeout=30) as answer:
            assert json.loads(answer.read()) == {"status": "SERVING"}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/v1/quantize/types", context=trusted, timeout=30)
        assert refused.value.code == 401
        assert json.loads(refused.value.read())["details"][0]["reason"] == "TOKEN_INVALID"
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext to the TLS port
            urllib.request.urlopen(f"http://localhost:{http_port}/api/v1/health", timeout=30)
        assert f"http https://127.0.0.1:{http_port}" in server.output()
    finally:
        server.stop()
