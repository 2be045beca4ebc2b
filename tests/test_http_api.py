"""The HTTP/JSON API end to end: a real server process with ``--http-port``, real HTTP over loopback
(urllib, as curl would send it). Routes come from the protos' google.api.http annotations; bodies are
the proto JSON mapping; errors are google.rpc.Status JSON with the HTTP status of their code; Watch is
Server-Sent Events or JSON lines; authentication, ownership and limits are the gRPC server's own."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http import client as http_client
from typing import Any

import pytest
from conftest import Models, RunningServer, free_port, start_server
from test_multi_user import create_token

from quantledger.http_api.bindings import API_FILES

MAX_BODY = 64 << 10


class Http:
    """A tiny HTTP client of one server: JSON in, (status, JSON) out."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.token = token

    def request(self, verb: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        call = urllib.request.Request(self.base + path, data=data, method=verb, headers=headers)
        try:
            with urllib.request.urlopen(call, timeout=120) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def ok(self, verb: str, path: str, body: Any = None) -> Any:
        status, answer = self.request(verb, path, body)
        assert status == 200, answer
        return answer

    def stream(self, path: str, accept: str = "text/event-stream") -> tuple[str, list[dict[str, Any]]]:
        """The content type and the JSON of every event (SSE ``data:`` lines, or JSON lines)."""
        headers = {"accept": accept, **({"authorization": f"Bearer {self.token}"} if self.token else {})}
        call = urllib.request.Request(self.base + path, headers=headers)
        events = []
        with urllib.request.urlopen(call, timeout=300) as answer:
            kind = answer.headers["content-type"]
            for line in answer:
                text = line.decode().strip()
                if accept == "text/event-stream" and text.startswith("data: "):
                    events.append(json.loads(text.removeprefix("data: ")))
                elif accept != "text/event-stream" and text:
                    events.append(json.loads(text))
        return kind, events


def reason(status: dict[str, Any]) -> str:
    [info] = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["domain"] == "quantledger.v1"
    return str(info["reason"])


def refused(answer: tuple[int, Any]) -> tuple[int, str]:
    return answer[0], reason(answer[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[tuple[RunningServer, Http]]:
    home = tmp_path_factory.mktemp("http-home")
    port, http_port = free_port(), free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "recommend", "registry"]
    command += ["--port", str(port), "--http-port", str(http_port)]
    env = {"HF_HUB_OFFLINE": "1", "QUANTLEDGER_MAX_MESSAGE_BYTES": str(MAX_BODY)}
    running = start_server(home, [models.root, home], port=port, command=command, extra_env=env)
    yield running, Http(f"http://127.0.0.1:{http_port}")
    running.stop()


@pytest.fixture()
def http(served: tuple[RunningServer, Http]) -> Http:
    return served[1]


def test_the_startup_line_names_the_http_address(served: tuple[RunningServer, Http]) -> None:
    server, http = served
    assert f"http {http.base}" in server.output()
    assert http.ok("GET", "/api/v1/health") == {"status": "SERVING"}


def test_create_get_list_watch_and_delete_a_job(http: Http, models: Models) -> None:
    job = http.ok("POST", "/api/v1/quantize/jobs", {"source": str(models.f16), "quant_types": ["Q8_0"]})
    assert job["name"].startswith("jobs/") and job["state"] in ("STATE_QUEUED", "STATE_RUNNING")
    assert http.ok("GET", f"/api/v1/quantize/{job['name']}")["name"] == job["name"]
    listed = http.ok("GET", "/api/v1/quantize/jobs?page_size=50")
    assert job["name"] in [j["name"] for j in listed["jobs"]]
    kind, snapshots = http.stream(f"/api/v1/quantize/{job['name']}:watch")
    assert kind.startswith("text/event-stream")
    assert snapshots[-1]["state"] == "STATE_SUCCEEDED", snapshots[-1]
    [output] = snapshots[-1]["outputs"]
    assert output["quant_type"] == "Q8_0" and len(output["sha256"]) == 64
    # a finished job's watch as JSON lines: one snapshot, the last
    kind, lines = http.stream(f"/api/v1/quantize/{job['name']}:watch", accept="application/x-ndjson")
    assert kind.startswith("application/x-ndjson") and lines[-1]["state"] == "STATE_SUCCEEDED"
    assert refused(http.request("POST", f"/api/v1/quantize/{job['name']}:cancel", {})) == (
        400,
        "JOB_ALREADY_FINISHED",
    )
    deleted = http.ok("DELETE", f"/api/v1/quantize/{job['name']}")
    assert deleted["delete_time"] and not pathlib.Path(output["path"]).exists()


def test_cancel_a_running_job(http: Http, models: Models) -> None:
    job = http.ok("POST", "/api/v1/quantize/jobs", {"source": str(models.large), "quant_types": ["Q4_K_M"]})
    cancelled = http.ok("POST", f"/api/v1/quantize/{job['name']}:cancel", {})
    assert cancelled["state"] == "STATE_CANCELLED"


def test_estimate_types_recommend_and_registry(http: Http, models: Models) -> None:
    estimate = http.ok("POST", "/api/v1/quantize/estimate", {"source": str(models.f16), "quant_types": ["Q8_0"]})
    assert int(estimate["outputs"][0]["size_bytes"]) > 0
    types = http.ok("GET", "/api/v1/quantize/types?page_size=200")
    assert "Q4_K_M" in [t["name"] for t in types["quant_types"]]
    page = http.ok("GET", "/api/v1/quantize/types?page_size=2")
    assert len(page["quant_types"]) == 2 and page["next_page_token"]
    advice = http.ok(
        "POST",
        "/api/v1/recommend",
        {"model": {"gguf_path": str(models.f16)}, "hardware": {"ram_bytes": str(8 << 30)}},
    )
    assert advice["options"] and advice["options"][0]["quant_type"]
    assert refused(http.request("GET", "/api/v1/registry/files/abc:verify")) == (400, "INVALID_ARGUMENT")
    assert refused(http.request("GET", f"/api/v1/registry/files/{'ab' * 32}/records/nonsense")) == (
        400,
        "INVALID_ARGUMENT",
    )


def test_errors_carry_the_status_of_their_code_and_their_reason(
    http: Http, models: Models, tmp_path: pathlib.Path
) -> None:
    assert refused(http.request("GET", "/api/v1/quantize/jobs/B@D")) == (400, "INVALID_ARGUMENT")
    assert refused(http.request("GET", "/api/v1/quantize/jobs/0123456789abcdef")) == (404, "JOB_NOT_FOUND")
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(models.f16.read_bytes())
    created = http.request("POST", "/api/v1/quantize/jobs", {"source": str(outside), "quant_types": ["Q8_0"]})
    assert refused(created) == (403, "PATH_NOT_ALLOWED")
    status = created[1]
    assert status["code"] == 7 and status["message"]  # google.rpc.Status: PERMISSION_DENIED
    assert refused(http.request("POST", "/api/v1/quantize/jobs", raw=b"{not json")) == (400, "INVALID_ARGUMENT")
    assert refused(http.request("GET", "/api/v1/quantize/jobs?page_size=-1")) == (400, "INVALID_ARGUMENT")
    assert refused(http.request("GET", "/api/v1/quantize/jobs?no_such_field=1")) == (400, "INVALID_ARGUMENT")


def test_a_body_over_the_message_limit_is_refused(http: Http, models: Models) -> None:
    body = {"source": str(models.f16), "quant_types": ["Q8_0"], "request_id": "x" * (MAX_BODY + 1)}
    assert refused(http.request("POST", "/api/v1/quantize/jobs", body)) == (413, "REQUEST_TOO_LARGE")
    assert http.ok("GET", "/api/v1/health")["status"] == "SERVING"  # and the server keeps serving


def test_openapi_lists_every_rpc(http: Http) -> None:
    document = http.ok("GET", "/api/openapi.json")
    operations = {
        operation["operationId"]: (verb, path)
        for path, verbs in document["paths"].items()
        for verb, operation in verbs.items()
    }
    rpcs = {m.full_name for f in API_FILES for s in f.services_by_name.values() for m in s.methods}
    assert rpcs <= set(operations), rpcs - set(operations)
    assert operations["quantledger.v1.QuantizeService.CancelQuantizeJob"] == (
        "post",
        "/api/v1/quantize/jobs/{job}:cancel",
    )
    create = document["paths"]["/api/v1/quantize/jobs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/quantledger.v1.QuantizeJob"
    }
    assert "quantledger.v1.QuantizeJob" in document["components"]["schemas"]


def test_tokens_authenticate_http_calls_as_they_do_grpc(tmp_path: pathlib.Path, models: Models) -> None:
    home = tmp_path / "home"
    alice, bob = create_token(home, "alice"), create_token(home, "bob")
    port, http_port = free_port(), free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize"]
    command += ["--port", str(port), "--http-port", str(http_port)]
    server = start_server(
        home, [models.root, home], port=port, command=command, extra_env={"QUANTLEDGER_AUTH": "tokens"}
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        anonymous, as_alice, as_bob = Http(base), Http(base, alice), Http(base, bob)
        assert anonymous.ok("GET", "/api/v1/health")["status"] == "SERVING"  # open, as gRPC health is
        assert refused(anonymous.request("GET", "/api/v1/quantize/jobs")) == (401, "TOKEN_INVALID")
        assert refused(Http(base, "ql_nonsense").request("GET", "/api/v1/quantize/jobs")) == (401, "TOKEN_INVALID")
        job = as_alice.ok("POST", "/api/v1/quantize/jobs", {"source": str(models.f16), "quant_types": ["Q8_0"]})
        assert job["owner"] == "alice"
        assert refused(as_bob.request("GET", f"/api/v1/quantize/{job['name']}")) == (404, "JOB_NOT_FOUND")
        assert refused(as_bob.request("POST", f"/api/v1/quantize/{job['name']}:cancel", {})) == (404, "JOB_NOT_FOUND")
        assert job["name"] not in [j["name"] for j in as_bob.ok("GET", "/api/v1/quantize/jobs").get("jobs", [])]
        assert as_alice.ok("GET", f"/api/v1/quantize/{job['name']}")["owner"] == "alice"
        # refusals go to the same audit log as gRPC's, naming the RPC the route maps to
        refusals = [json.loads(line) for line in (home / "audit.log").read_text().splitlines()]
        assert any(r.get("method") == "/quantledger.v1.QuantizeService/ListQuantizeJobs" for r in refusals), refusals
    finally:
        server.stop()


def test_a_busy_http_port_is_port_in_use(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        argv = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "--port", str(free_port())]
        env = {**os.environ, "QUANTLEDGER_HOME": str(tmp_path), "QUANTLEDGER_ALLOWED_ROOTS": str(tmp_path)}
        started = subprocess.run(
            [*argv, "--http-port", str(busy)], capture_output=True, text=True, env=env, timeout=120
        )
    assert started.returncode != 0
    assert "PORT_IN_USE" in started.stdout + started.stderr and str(busy) in started.stdout + started.stderr


def test_the_route_table_in_the_docs_is_the_annotations() -> None:
    """docs/API.md lists every route the server builds from the protos, and no other."""
    from conftest import REPO

    from quantledger.http_api.bindings import bindings

    doc = (REPO / "docs" / "API.md").read_text().split("## HTTP/JSON API", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("`")[1] for line in doc.splitlines() if line.startswith("| `")}
    assert documented == {f"{b.verb} {b.template}" for b in bindings()}


def test_a_deeply_nested_body_is_invalid_argument_and_the_server_keeps_serving(http: Http) -> None:
    """JSON from outside is bounded in depth before it is parsed (registry_client.bounded_json)."""
    deep = b"[" * 5_000 + b"]" * 5_000  # 10 kB, within the message limit
    assert refused(http.request("POST", "/api/v1/quantize/jobs", raw=deep)) == (400, "INVALID_ARGUMENT")
    assert http.ok("GET", "/api/v1/health") is not None


UPLOAD_LIMIT = 3 << 20  # more than tiny-f16.gguf, less than large-f16.gguf


@pytest.fixture(scope="module")
def uploads_server(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[tuple[RunningServer, Http]]:
    """A server whose allowed roots do not hold its data dir: uploaded files are readable by their owner's
    jobs all the same."""
    home = tmp_path_factory.mktemp("uploads-home")
    port, http_port = free_port(), free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize"]
    command += ["--port", str(port), "--http-port", str(http_port)]
    env = {"QUANTLEDGER_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    running = start_server(home, [models.large.parent / "no-such-root"], port=port, command=command, extra_env=env)
    yield running, Http(f"http://127.0.0.1:{http_port}")
    running.stop()


def post_file(base: str, filename: str, body: Any, chunked: bool = False) -> tuple[int, Any]:
    """POST /api/v1/uploads with ``body`` (bytes, or an iterator of chunks sent without a length)."""
    connection = http_client.HTTPConnection(base.removeprefix("http://"), timeout=120)
    try:
        connection.request(
            "POST",
            f"/api/v1/uploads?filename={urllib.parse.quote(filename)}",
            body=body,
            headers={"content-type": "application/octet-stream"},
            encode_chunked=chunked,
        )
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def kept_files(home: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in (home / "uploads").rglob("*") if p.is_file())


def test_an_uploaded_file_is_kept_once_by_its_digest_and_is_a_source(
    uploads_server: tuple[RunningServer, Http], models: Models
) -> None:
    server, api = uploads_server
    data = models.f16.read_bytes()
    assert refused(
        api.request("POST", "/api/v1/quantize/estimate", {"source": str(models.f16), "quant_types": ["Q8_0"]})
    ) == (
        403,
        "PATH_NOT_ALLOWED",
    )  # the file itself is outside this server's roots
    status, first = post_file(api.base, "tiny-f16.gguf", data)
    assert status == 200, first
    assert first["sha256"] == hashlib.sha256(data).hexdigest() and first["size_bytes"] == len(data)
    assert pathlib.Path(first["path"]).read_bytes() == data
    status, again = post_file(api.base, "tiny-f16.gguf", iter([data[:100_000], data[100_000:]]), chunked=True)
    assert status == 200 and again == first  # the same bytes: the same file, kept once
    assert kept_files(server.home) == [pathlib.Path(first["path"])]
    job = api.ok("POST", "/api/v1/quantize/jobs", {"source": first["path"], "quant_types": ["Q8_0"]})
    _, snapshots = api.stream(f"/api/v1/quantize/{job['name']}:watch")
    assert snapshots[-1]["state"] == "STATE_SUCCEEDED", snapshots[-1]


def test_an_upload_over_the_limit_is_413_and_leaves_nothing_on_disk(
    uploads_server: tuple[RunningServer, Http], models: Models
) -> None:
    server, api = uploads_server
    before = kept_files(server.home)
    too_large = models.large.read_bytes()[: UPLOAD_LIMIT + 1]
    status, declared = post_file(api.base, "big.gguf", too_large)  # a Content-Length past the limit
    assert (status, reason(declared)) == (413, "REQUEST_TOO_LARGE")
    chunks = (too_large[i : i + (1 << 20)] for i in range(0, len(too_large), 1 << 20))
    status, streamed = post_file(api.base, "big.gguf", chunks, chunked=True)  # no length: cut off on the way
    assert (status, reason(streamed)) == (413, "REQUEST_TOO_LARGE")
    assert kept_files(server.home) == before
    for bad in ("../escape.gguf", ".hidden", "a/b.gguf", ""):
        status, answer = post_file(api.base, bad, b"GGUF")
        assert (status, reason(answer)) == (400, "INVALID_ARGUMENT"), bad
    assert kept_files(server.home) == before
    assert api.ok("GET", "/api/v1/health")["status"] == "SERVING"


def test_openapi_describes_the_upload_route(uploads_server: tuple[RunningServer, Http]) -> None:
    operation = uploads_server[1].ok("GET", "/api/openapi.json")["paths"]["/api/v1/uploads"]["post"]
    assert "application/octet-stream" in operation["requestBody"]["content"]
    assert "413" in operation["responses"]


def test_the_http_listener_turns_nagle_off_for_its_connections() -> None:
    """Keep-alive answers are written in more than one piece: with Nagle's algorithm on, a client's second
    request on a connection waited ~40 ms for its own delayed ACK (bench/http_api.py measured 0.14x of gRPC's
    rate). Accepted connections inherit TCP_NODELAY from the listener."""
    from quantledger.http_api.serving import bind_http

    listener = bind_http("127.0.0.1", 0)
    try:
        client = socket.create_connection(listener.getsockname()[:2])
        listener.setblocking(True)
        accepted, _ = listener.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        listener.close()
