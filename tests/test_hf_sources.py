"""Source identity, the hub through huggingface_hub's offline cache, and the conversion cache."""

from __future__ import annotations

import hashlib
import os
import pathlib
import time

import pytest
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
