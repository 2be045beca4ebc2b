"""Source identity, the hub through huggingface_hub's offline cache, and the conversion cache."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import free_port
from hub_cache import add_repo

from quantledger.errors import SourceNotFound
from quantledger.hf.cache import ConversionCache, cache_key
from quantledger.hf.hub import fetch_config, fetch_snapshot, parse_hub_id
from quantledger.hf.manifest import build_manifest, root_digest


@pytest.fixture()
def hf_folder(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"pickle: never fetched")
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code must never run')")
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return folder


@pytest.fixture()
def offline_cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_parse_hub_id() -> None:
    ref = parse_hub_id("Qwen/Qwen2.5-0.5B-Instruct@a1b2c3")
    assert ref is not None and (ref.repo_id, ref.revision) == ("Qwen/Qwen2.5-0.5B-Instruct", "a1b2c3")
    ref = parse_hub_id("hf://sentence-transformers/all-MiniLM-L6-v2")
    assert ref is not None and (ref.repo_id, ref.revision) == ("sentence-transformers/all-MiniLM-L6-v2", "main")
    for not_hub in ("/abs/path/model.gguf", "./model", "model.gguf", "a/b/c", "../x/y", "owner/", "owner/name@bad rev"):
        assert parse_hub_id(not_hub) is None, not_hub


def test_manifest_root_digest_names_the_bytes(hf_folder: pathlib.Path) -> None:
    files = ["config.json", "model.safetensors", "tokenizer.json"]
    manifest = build_manifest(hf_folder, files)
    expected = hashlib.sha256(
        b"".join(f"{f}\0{hashlib.sha256((hf_folder / f).read_bytes()).hexdigest()}\n".encode() for f in sorted(files))
    ).hexdigest()
    assert manifest.root_digest == expected == root_digest(manifest.files)
    assert (
        manifest.digest_of("model.safetensors")
        == hashlib.sha256((hf_folder / "model.safetensors").read_bytes()).hexdigest()
    )
    (hf_folder / "tokenizer.json").write_text('{"changed": true}')
    assert build_manifest(hf_folder, files).root_digest != manifest.root_digest


def test_offline_hub_snapshot_resolves_revision_and_fetches_only_what_is_needed(hf_folder, offline_cache) -> None:
    commit = add_repo(offline_cache, "acme/tiny-llama", hf_folder, revision="v1")
    snapshot = fetch_snapshot(parse_hub_id("acme/tiny-llama@v1"))  # type: ignore[arg-type]
    assert snapshot.commit == commit
    present = sorted(p.relative_to(snapshot.folder).as_posix() for p in snapshot.folder.rglob("*") if p.is_file())
    assert "config.json" in present and "model.safetensors" in present
    # the weight's digest as the hub records it (LFS oid = SHA-256) is known and right
    weight = (hf_folder / "model.safetensors").read_bytes()
    assert snapshot.lfs_sha256["model.safetensors"] == hashlib.sha256(weight).hexdigest()
    config = fetch_config(parse_hub_id(f"acme/tiny-llama@{commit}"))  # type: ignore[arg-type]
    assert (config / "config.json").is_file()


def test_unknown_repo_offline_is_source_not_found(offline_cache) -> None:
    with pytest.raises(SourceNotFound, match="not in the local Hugging Face cache"):
        fetch_snapshot(parse_hub_id("nobody/nothing@main"))  # type: ignore[arg-type]


def test_conversion_cache_is_lru_and_size_capped(tmp_path: pathlib.Path) -> None:
    cache = ConversionCache(tmp_path / "cache", max_bytes=2500)
    keys = [cache_key(f"root{i}", "1", "F16") for i in range(3)]
    assert len(set(keys)) == 3 and cache_key("root0", "1", "F16", "lora") != keys[0]
    for i, key in enumerate(keys[:2]):
        produced = cache.temp_path(key)
        produced.write_bytes(b"x" * 1000)
        cache.store(key, produced, {"i": i})
        time.sleep(0.01)
    assert cache.lookup(keys[0]) is not None  # touch: keys[1] is now the least recently used
    produced = cache.temp_path(keys[2])
    produced.write_bytes(b"y" * 1000)
    with cache.pinned(keys[1]):
        cache.store(keys[2], produced, {"i": 2})  # over the cap, but keys[1] is pinned: keys[0] goes
    assert {e.key for e in cache.entries()} == {keys[1], keys[2]}  # entries() does not count as use
    produced = cache.temp_path(keys[0])
    produced.write_bytes(b"z" * 1000)
    cache.store(keys[0], produced, {"i": 0})
    assert {e.key for e in cache.entries()} == {keys[2], keys[0]}  # keys[1]: unpinned now, least recently used
    assert sum(e.size_bytes for e in cache.entries()) <= 2500
    assert not list((tmp_path / "cache").glob(".*"))


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """A hub endpoint that answers every request with one status (and the hub's X-Error-Code header)."""

    status = 404
    error_code = "RepoNotFound"

    def do_GET(self) -> None:
        body = b'{"error": "answered by the test hub"}'
        self.send_response(self.status)
        if self.error_code:
            self.send_header("X-Error-Code", self.error_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def fake_hub() -> Iterator[tuple[str, type[_FakeHub]]]:
    handler = type("Hub", (_FakeHub,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def fetch_with_endpoint(endpoint: str, cache: pathlib.Path, source: str = "acme/tiny-llama@main") -> dict[str, str]:
    """fetch_config against ``endpoint`` in a fresh interpreter (huggingface_hub reads HF_ENDPOINT on import)."""
    script = (
        "import json, sys\n"
        "from quantledger.errors import QuantledgerError\n"
        "from quantledger.hf.hub import fetch_config, parse_hub_id\n"
        "try:\n"
        "    fetch_config(parse_hub_id(sys.argv[1]))\n"
        "except QuantledgerError as exc:\n"
        "    print(json.dumps({'code': exc.code, 'reason': exc.reason, 'message': exc.message}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    done = subprocess.run([sys.executable, "-c", script, source], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout, done.stderr
    return json.loads(done.stdout)


def test_an_unreachable_hub_is_hub_unavailable_not_source_not_found(tmp_path: pathlib.Path) -> None:
    closed = free_port()  # nothing listens there: the connection is refused
    began = time.monotonic()
    error = fetch_with_endpoint(f"http://127.0.0.1:{closed}", tmp_path / "cache")
    assert (error["code"], error["reason"]) == ("UNAVAILABLE", "HUB_UNAVAILABLE"), error
    assert "HF_HUB_OFFLINE" in error["message"] and str(closed) not in error["message"]
    assert time.monotonic() - began < 60


def test_a_hub_that_answers_5xx_is_unavailable_and_a_missing_repo_or_revision_is_not_found(
    tmp_path: pathlib.Path, fake_hub: tuple[str, type[_FakeHub]]
) -> None:
    url, hub = fake_hub
    hub.status, hub.error_code = 404, "RepoNotFound"
    assert fetch_with_endpoint(url, tmp_path / "cache")["reason"] == "SOURCE_NOT_FOUND"
    hub.status, hub.error_code = 404, "RevisionNotFound"
    assert fetch_with_endpoint(url, tmp_path / "cache", "acme/tiny-llama@nope")["reason"] == "SOURCE_NOT_FOUND"
    hub.status, hub.error_code = 503, ""
    error = fetch_with_endpoint(url, tmp_path / "cache")
    assert (error["code"], error["reason"]) == ("UNAVAILABLE", "HUB_UNAVAILABLE"), error
