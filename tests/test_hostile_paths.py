"""Escapes from the allowed roots (issue 10, classes 4-7): every file read or written for a client stays
inside the roots, errors say what is wrong without leaking, temp files cannot be redirected, and the
service's own directories are never a client's output.

The server runs as the test user here; the secrets are ordinary files outside the roots standing in
for /etc/shadow and friends.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import grpc
import numpy as np
import pytest
from conftest import Models, RunningServer, error_reason, job_error_reason, start_server, wait_for_job
from hf_models import save_file, write_causal_folder
from hostile import health_probe

from quantledger.errors import QuantizeFailed, SourceInvalid
from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc

SECRET = b"TOPSECRETBYTES-0123456789-do-not-echo"


def create(stub, source, types=("Q4_0",), **options):
    job = pb.QuantizeJob(source=str(source), quant_types=list(types), options=pb.QuantizeOptions(**options))
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))


def refused(server: RunningServer, stub, source, types=("Q4_0",), **options) -> tuple[grpc.StatusCode, str, str]:
    """Create a job that must be refused; the server must keep answering health checks meanwhile."""
    with health_probe(server.address) as probe, pytest.raises(grpc.RpcError) as caught:
        create(stub, source, types, **options)
    probe.assert_answered()
    return caught.value.code(), error_reason(caught.value), caught.value.details() or ""


def refused_or_failed(server: RunningServer, stub, source, **options) -> tuple[str, str]:
    """(reason, message) of a request refused at create, or of the job it made, which must fail (files
    read only while converting are checked then)."""
    with health_probe(server.address) as probe:
        try:
            job = create(stub, source, **options)
        except grpc.RpcError as exc:
            result = (error_reason(exc), exc.details() or "")
        else:
            done = wait_for_job(stub, job.name)
            assert done.state == pb.QuantizeJob.STATE_FAILED, done
            result = (job_error_reason(done), done.error.message)
    probe.assert_answered()
    return result


DENIED = (grpc.StatusCode.PERMISSION_DENIED, "PATH_NOT_ALLOWED")


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory, models: Models) -> dict[str, pathlib.Path]:
    base = tmp_path_factory.mktemp("hostile")
    root, outside, home = base / "root", base / "outside", base / "home"
    for path in (root, outside, home):
        path.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(SECRET * 4)
    shutil.copy(models.f16, outside / "model-f16.gguf")
    shutil.copy(models.f16, root / "tiny-f16.gguf")
    hf = write_causal_folder(root / "qwen", "Qwen2ForCausalLM", hidden=64, ffn=128, layers=1, heads=2, kv_heads=1)
    return {"root": root, "outside": outside, "home": home, "secret": secret, "hf": hf}


@pytest.fixture(scope="module")
def hostile_server(area: dict[str, pathlib.Path]):
    running = start_server(area["home"], [area["root"], area["home"]])
    yield running
    running.stop()


@pytest.fixture()
def hstub(hostile_server: RunningServer):
    with hostile_server.channel() as channel:
        yield pb_grpc.QuantizeServiceStub(channel)


def hf_copy(area: dict[str, pathlib.Path], name: str) -> pathlib.Path:
    target = area["root"] / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(area["hf"], target, symlinks=True)
    return target


# ---- class 4: files of a checked folder ---------------------------------------------------------------


@pytest.mark.parametrize("member", ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
def test_symlinked_hf_files_leading_out_are_refused(area, hostile_server, hstub, member: str) -> None:
    folder = hf_copy(area, f"link-{member}")
    outside_copy = area["outside"] / f"copy-{member}"
    shutil.copy(folder / member, outside_copy)
    (folder / member).unlink()
    os.symlink(outside_copy, folder / member)
    reason, message = refused_or_failed(hostile_server, hstub, folder)
    assert reason == "PATH_NOT_ALLOWED", message
    assert str(area["outside"]) not in message


def test_weight_index_entries_must_be_plain_names(area, hostile_server, hstub) -> None:
    shutil.copy(area["secret"], area["outside"] / "weights.safetensors")
    for entry in (str(area["secret"]), f"../../{area['outside'].name}/weights.safetensors", "sub/../x.safetensors"):
        folder = hf_copy(area, "index")
        index = {"metadata": {"total_size": 1}, "weight_map": {"model.embed_tokens.weight": entry}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        code, reason, message = refused(hostile_server, hstub, folder)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"), (entry, message)
        assert "not a plain file name" in message, message
        assert str(int.from_bytes(SECRET[:8], "little")) not in message


def test_safetensors_errors_do_not_echo_file_bytes(area, hostile_server, hstub) -> None:
    folder = hf_copy(area, "garbage-weights")
    (folder / "model.safetensors").write_bytes(SECRET * 4)
    code, reason, message = refused(hostile_server, hstub, folder)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"), message
    assert str(int.from_bytes(SECRET[:8], "little")) not in message
    assert SECRET.decode()[:8] not in message


def test_fifos_and_devices_are_refused_without_blocking(area, hostile_server, hstub) -> None:
    folder = hf_copy(area, "fifo-weights")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    code, reason, message = refused(hostile_server, hstub, folder)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_INVALID"), message
    fifo = area["root"] / "fifo-f16.gguf"
    if not fifo.exists():
        os.mkfifo(fifo)
    assert refused(hostile_server, hstub, fifo)[1] == "SOURCE_INVALID"
    assert refused(hostile_server, hstub, area["root"] / "tiny-f16.gguf", imatrix_path=str(fifo))[1] == "SOURCE_INVALID"
    device = area["root"] / "null-link.gguf"
    if not os.path.lexists(device):
        os.symlink("/dev/null", device)
    assert refused(hostile_server, hstub, device)[:2] == DENIED


def test_symlinked_adapter_weights_are_refused(area, hostile_server, hstub) -> None:
    adapter = area["root"] / "adapter"
    adapter.mkdir(exist_ok=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    weights = area["outside"] / "adapter_model.safetensors"
    a = np.zeros((2, 64), np.float32)
    b = np.zeros((64, 2), np.float32)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, str(weights))
    link = adapter / "adapter_model.safetensors"
    if not os.path.lexists(link):
        os.symlink(weights, link)
    reason, message = refused_or_failed(hostile_server, hstub, area["hf"], lora_dir=str(adapter))
    assert reason == "PATH_NOT_ALLOWED", message


def test_split_shard_leading_out_is_refused(area, hostile_server, hstub) -> None:
    from test_split_source import write_split_llama

    split = area["root"] / "split"
    split.mkdir(exist_ok=True)
    write_split_llama(split / "m.gguf", max_tensors=8)
    shards = sorted(split.glob("m-*-of-*.gguf"))
    assert len(shards) > 1
    moved = area["outside"] / shards[1].name
    shutil.move(shards[1], moved)
    os.symlink(moved, shards[1])
    code, reason, message = refused(hostile_server, hstub, shards[0])
    assert (code, reason) == DENIED, message


# ---- class 5: what errors say ------------------------------------------------------------------------


def test_outside_paths_read_the_same_whether_they_exist_or_not(area, hostile_server, hstub) -> None:
    existing = area["outside"] / "model-f16.gguf"
    missing = area["outside"] / "nothing-f16.gguf"
    link = area["root"] / "to-outside-f16.gguf"
    if not os.path.lexists(link):
        os.symlink(existing, link)
    dangling = area["root"] / "to-nothing-f16.gguf"
    if not os.path.lexists(dangling):
        os.symlink(missing, dangling)
    answers = {}
    for path in (existing, missing, link, dangling):
        code, reason, message = refused(hostile_server, hstub, path)
        assert (code, reason) == DENIED, message
        answers[path] = message.replace(str(path), "<path>")
        assert str(area["outside"]) not in answers[path], "the error tells where a link points"
    assert answers[existing] == answers[missing]
    assert answers[link] == answers[dangling]


@pytest.mark.parametrize("field", ["quant_type", "source", "output_dir", "imatrix_path", "lora_dir"])
def test_huge_client_strings_are_cut_in_errors(area, hostile_server, hstub, field: str) -> None:
    huge = "A" * (1 << 20)
    model = area["root"] / "tiny-f16.gguf"
    if field == "quant_type":
        got = refused(hostile_server, hstub, model, types=(huge,))
    elif field == "source":
        got = refused(hostile_server, hstub, "/x/" + huge)
    else:
        got = refused(hostile_server, hstub, area["hf"] if field == "lora_dir" else model, **{field: "/x/" + huge})
    assert got[1], got
    assert len(got[2]) < 4096


# ---- class 6: temp and partial files -----------------------------------------------------------------


def test_planted_temp_and_output_links_are_not_followed(area, hostile_server, hstub) -> None:
    out = area["root"] / "out-planted"
    out.mkdir(exist_ok=True)
    victims = [area["outside"] / f"victim-{i}" for i in range(3)]
    for victim in victims:
        victim.write_bytes(SECRET)
    os.symlink(victims[0], out / ".tiny-Q4_0.gguf.provenance.json.tmp")
    os.symlink(victims[1], out / "tiny-Q4_0.gguf.provenance.json")
    os.symlink(victims[2], out / "tiny-Q4_0.gguf")
    with health_probe(hostile_server.address) as probe:
        job = create(hstub, area["root"] / "tiny-f16.gguf", output_dir=str(out), overwrite=True)
        done = wait_for_job(hstub, job.name)
    probe.assert_answered()
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    for victim in victims:
        assert victim.read_bytes() == SECRET
    assert not (out / "tiny-Q4_0.gguf").is_symlink() and (out / "tiny-Q4_0.gguf").stat().st_size > 1000
    assert not (out / "tiny-Q4_0.gguf.provenance.json").is_symlink()


def test_partial_files_are_claimed_before_llama_cpp_writes(tmp_path: pathlib.Path) -> None:
    from quantledger.quantize.partial_files import claimed_partials

    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    partial = tmp_path / ".m-Q4_0.job.partial"
    os.symlink(victim, partial)
    # what llama.cpp does: open by the name it is given, truncate, write
    with claimed_partials(str(partial)) as target, open(target, "wb") as handle:
        handle.write(b"quantized")
    assert victim.read_bytes() == SECRET
    assert not partial.is_symlink() and partial.read_bytes() == b"quantized"
    # a split output: every shard name claimed, links planted there removed
    shards = [tmp_path / f"{partial.name}-{i:05d}-of-00002.gguf" for i in (1, 2)]
    os.symlink(victim, shards[1])
    with claimed_partials(str(partial), 2) as prefix:
        for i in (1, 2):
            with open(f"{prefix}-{i:05d}-of-00002.gguf", "wb") as handle:
                handle.write(b"shard")
    assert victim.read_bytes() == SECRET
    assert all(s.read_bytes() == b"shard" and not s.is_symlink() for s in shards)
    # a partial name swapped while llama.cpp writes is noticed
    with pytest.raises(QuantizeFailed), claimed_partials(str(partial)) as target:
        partial.unlink()
        os.symlink(victim, partial)
    # a directory at the partial name is refused, nothing is written into it
    partial.unlink()
    partial.mkdir()
    with pytest.raises(QuantizeFailed), claimed_partials(str(partial)):
        pass


def test_atomic_write_and_folder_files_refuse_links(tmp_path: pathlib.Path) -> None:
    from quantledger.client_files import folder_file
    from registry_client.atomic_files import write_atomic

    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    target = tmp_path / "out.json"
    os.symlink(victim, target)
    write_atomic(target, b"{}")
    assert victim.read_bytes() == SECRET and target.read_bytes() == b"{}" and not target.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("../victim", "/etc/passwd", "a\x00b", ".", ""):
        with pytest.raises(SourceInvalid):
            folder_file(folder, name)


# ---- class 7: the service's own directories ------------------------------------------------------------


def test_data_dir_is_never_an_output_dir(area, hostile_server, hstub) -> None:
    home = area["home"]
    model = area["root"] / "tiny-f16.gguf"
    first = wait_for_job(hstub, create(hstub, model).name)
    assert first.state == pb.QuantizeJob.STATE_SUCCEEDED, first.error
    victim = pathlib.Path(first.outputs[0].path)
    before = victim.read_bytes()
    link = area["root"] / "into-home"
    if not os.path.lexists(link):
        os.symlink(home, link)
    for out in (victim.parent, home, home / "keys", home / "conversion-cache", home / "logs", link / "artifacts"):
        code, reason, message = refused(hostile_server, hstub, model, output_dir=str(out), overwrite=True)
        assert (code, reason) == DENIED, (out, message)
        assert "data directory" in message
    assert victim.read_bytes() == before
