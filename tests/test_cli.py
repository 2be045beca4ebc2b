"""The quantledger command line, as a user runs it, against a real server."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from conftest import Models, RunningServer

from quantledger.cli import main as cli_main  # imported once, before any test redirects sys.stdout
from quantledger.gguf.reader import read_gguf_header

QUANTLEDGER = shutil.which("quantledger") or ""


def cli(*args: str, server: RunningServer | None = None, env: dict[str, str] | None = None, timeout: float = 300):
    argv = [QUANTLEDGER] if QUANTLEDGER else [sys.executable, "-m", "quantledger.cli.main"]
    argv += list(args)
    if server is not None:
        argv += ["--server", server.address]
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env)


def test_console_script_is_installed() -> None:
    assert QUANTLEDGER, "the `quantledger` console script is not on PATH: pip install -e '.[dev]'"


def test_submit_wait_json_then_show_list_watch(server: RunningServer, models: Models) -> None:
    out_dir = models.root / "cli-submit"
    done = cli(
        "submit",
        str(models.f16),
        "--quant",
        "Q4_K_M",
        "--quant",
        "Q8_0",
        "--wait",
        "--json",
        "--out",
        str(out_dir),
        server=server,
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "STATE_SUCCEEDED"
    assert [o["quant_type"] for o in job["outputs"]] == ["Q4_K_M", "Q8_0"]
    for output in job["outputs"]:
        data = pathlib.Path(output["path"]).read_bytes()
        assert int(output["size_bytes"]) == len(data)
        assert output["sha256"] == hashlib.sha256(data).hexdigest()
        assert output["bits_per_weight"] > 4

    shown = json.loads(cli("jobs", "show", job["name"], "--json", server=server).stdout)
    assert shown["name"] == job["name"] and shown["outputs"] == job["outputs"]
    by_id = cli("jobs", "show", job["name"].removeprefix("jobs/"), server=server)
    assert by_id.returncode == 0 and job["outputs"][0]["sha256"] in by_id.stdout
    listed = json.loads(cli("jobs", "list", "--json", "--page-size", "100", server=server).stdout)
    assert job["name"] in [j["name"] for j in listed["jobs"]]
    watched = cli("jobs", "watch", job["name"], "--json", server=server)
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert watched.returncode == 0 and lines[-1]["state"] == "STATE_SUCCEEDED"


def test_human_output_and_progress(server: RunningServer, models: Models) -> None:
    done = cli(
        "submit",
        str(models.f16),
        "-q",
        "Q5_K_M",
        "--wait",
        "--out",
        str(models.root / "cli-human"),
        server=server,
    )
    assert done.returncode == 0, done.stderr
    assert "SUCCEEDED" in done.stdout and "sha256" in done.stdout and "BPW" in done.stdout
    assert "%" in done.stderr  # the progress bar (plain lines when not a terminal)


def test_estimate_and_quant_types(server: RunningServer, models: Models) -> None:
    estimate = json.loads(cli("estimate", str(models.f16), "-q", "Q4_K_M", "--json", server=server).stdout)
    assert estimate["outputs"][0]["quant_type"] == "Q4_K_M" and int(estimate["outputs"][0]["size_bytes"]) > 0
    assert estimate["fits_on_disk"] is True
    human = cli("estimate", str(models.f16), "-q", "Q4_K_M", server=server)
    assert "Q4_K_M" in human.stdout and "fits" in human.stdout
    types = json.loads(cli("quant-types", "--json", server=server).stdout)
    assert "Q4_K_M" in [t["name"] for t in types["quant_types"]]
    assert "IQ2_XXS" in cli("quant-types", server=server).stdout


def test_failures_exit_non_zero_with_reason(server: RunningServer, models: Models) -> None:
    missing = cli("submit", str(models.root / "nope.gguf"), "-q", "Q4_K_M", "--json", server=server)
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["reason"] == "SOURCE_NOT_FOUND"
    assert "SOURCE_NOT_FOUND" in missing.stderr
    unknown = cli("submit", str(models.f16), "-q", "Q7_Z", server=server)
    assert unknown.returncode == 1 and "UNKNOWN_QUANT_TYPE" in unknown.stderr
    gone = cli("jobs", "show", "jobs/doesnotexist", server=server)
    assert gone.returncode == 1 and "JOB_NOT_FOUND" in gone.stderr
    nobody = cli("jobs", "list", "--server", "127.0.0.1:1", "--json")
    assert nobody.returncode == 1 and json.loads(nobody.stdout)["error"]["reason"] == "SERVER_UNAVAILABLE"
    usage = cli("submit", str(models.f16))
    assert usage.returncode == 2  # argparse: --quant is required


def test_cancel_from_cli(server: RunningServer, models: Models) -> None:
    created = json.loads(
        cli(
            "submit",
            str(models.large),
            "-q",
            "IQ4_XS",
            "--json",
            "--out",
            str(models.root / "cli-cancel"),
            server=server,
        ).stdout
    )
    cancelled = cli("jobs", "cancel", created["name"], "--json", server=server)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "STATE_CANCELLED"
    again = cli("jobs", "cancel", created["name"], "--json", server=server)
    assert again.returncode == 1 and json.loads(again.stdout)["error"]["reason"] == "JOB_ALREADY_FINISHED"


def test_jobs_delete_removes_the_outputs_and_keeps_the_job(server: RunningServer, models: Models) -> None:
    done = cli(
        "submit", str(models.f16), "-q", "Q8_0", "--wait", "--json", "--out", str(models.root / "cli-delete"),
        server=server,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    output = pathlib.Path(job["outputs"][0]["path"])
    assert output.is_file()
    deleted = cli("jobs", "delete", job["name"], "--json", server=server)
    assert deleted.returncode == 0, deleted.stderr
    body = json.loads(deleted.stdout)
    assert body["delete_time"] and body["outputs"] == job["outputs"] and body["owner"] == "local"
    assert not output.exists() and not pathlib.Path(f"{output}.provenance.json").exists()
    shown = cli("jobs", "show", job["name"], server=server)
    assert shown.returncode == 0 and "deleted" in shown.stdout and "owner        local" in shown.stdout


def test_quantize_locally_without_server(models: Models, tmp_path) -> None:
    out = tmp_path / "local"
    done = cli(
        "quantize",
        str(models.f16_320),
        "-q",
        "Q4_K_S",
        "-q",
        "Q6_K",
        "--out",
        str(out),
        "--json",
        env={"QUANTLEDGER_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "STATE_SUCCEEDED"
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "tiny320-Q4_K_S.gguf",
        "tiny320-Q4_K_S.gguf.provenance.json",
        "tiny320-Q6_K.gguf",
        "tiny320-Q6_K.gguf.provenance.json",
    ]
    assert all(o["fallback_tensor_count"] > 0 for o in job["outputs"])
    # no chain here: the provenance is written all the same, and nothing claims to be on chain
    for output in job["outputs"]:
        assert output["registry"]["state"] == "STATE_UNREGISTERED"
        statement = json.loads(pathlib.Path(output["registry"]["provenance_path"]).read_bytes())
        assert statement["subject"] == [
            {"name": pathlib.Path(output["path"]).name, "digest": {"sha256": output["sha256"]}}
        ]
    bad = cli(
        "quantize",
        str(models.q8_0),
        "-q",
        "Q4_0",
        "--out",
        str(out),
        env={"QUANTLEDGER_HOME": str(tmp_path / "home")},
    )
    assert bad.returncode == 1 and "REQUANTIZE_REFUSED" in bad.stderr


def test_a_tensor_type_file_is_read_in_order_and_the_first_matching_pattern_wins(models: Models, tmp_path) -> None:
    """One REGEX=TYPE per line, as llama-quantize reads it, after the --override flags; of two patterns that
    match a tensor the first wins (llama.cpp's rule)."""
    types = tmp_path / "types.txt"
    types.write_text("ffn_down=q8_0\n\nffn_.*=q5_0\n")
    out = tmp_path / "typed"
    done = cli(
        "quantize", str(models.f16), "-q", "Q4_0", "--override", "blk\\.1\\.ffn_up=f16",
        "--tensor-type-file", str(types), "--no-quality", "--out", str(out), "--json",
        env={"QUANTLEDGER_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    header = read_gguf_header(json.loads(done.stdout)["outputs"][0]["path"])
    kinds = {t.name: t.type_name for t in header.tensors}
    assert kinds["blk.0.ffn_down.weight"] == kinds["blk.1.ffn_down.weight"] == "Q8_0"  # the first line wins
    assert kinds["blk.0.ffn_up.weight"] == kinds["blk.0.ffn_gate.weight"] == "Q5_0"
    assert kinds["blk.1.ffn_up.weight"] == "F16"  # the flag comes before the file
    assert kinds["blk.0.attn_q.weight"] == "Q4_0"
    broken = tmp_path / "broken.txt"
    broken.write_text("ffn_down=q8_0\nno type here\n")
    bad = cli("quantize", str(models.f16), "-q", "Q4_0", "--tensor-type-file", str(broken), "--out", str(out))
    assert bad.returncode == 1 and "line 2" in bad.stderr and "INVALID_ARGUMENT" in bad.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path) -> None:
    done = cli("demo", "--json", env={"QUANTLEDGER_HOME": str(tmp_path / "home")}, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["job"]["state"] == "STATE_SUCCEEDED"
    checks = next(s for s in report["steps"] if s["step"].startswith("7."))
    assert checks["Q4_K_M"] == checks["Q8_0"] == "sha256 and predicted size match"  # re-hashed: a real comparison
    types = next(s for s in report["steps"] if s["step"].startswith("4."))
    assert types["llama.cpp"].startswith("llama.cpp ") and types["binding"].startswith("llama-cpp-python ")
    on_chain = next(s for s in report["steps"] if s["step"].startswith("8."))
    assert on_chain["Q4_K_M"].startswith("VALID on chain (tx 0x") and on_chain["Q8_0"].startswith("VALID")
    for output in report["job"]["outputs"]:
        assert output["registry"]["state"] == "STATE_REGISTERED"
    human = cli("demo", env={"QUANTLEDGER_HOME": str(tmp_path / "home2")}, timeout=600)
    assert human.returncode == 0, human.stderr
    assert "== 9." in human.stdout and "registry REGISTERED" in human.stdout


def test_up_accepts_its_flags_announces_json_and_stops_on_sigint(tmp_path) -> None:
    import signal

    from conftest import free_port, wait_serving

    port = free_port()
    env = dict(os.environ, QUANTLEDGER_HOME=str(tmp_path / "home"))
    argv = [QUANTLEDGER or "quantledger", "up", "--host", "127.0.0.1", "--port", str(port)]
    chain_port, http_port = free_port(), free_port()
    argv += ["--chain-port", str(chain_port), "--http-port", str(http_port), "--json"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        announcement = json.loads(process.stdout.readline())
        assert announcement["address"] == f"127.0.0.1:{port}" and "quantize" in announcement["serving"]
        assert announcement["serving"] == ["quantize", "recommend", "registry"]
        assert announcement["chain_url"] == f"http://127.0.0.1:{chain_port}"
        assert announcement["http"] == f"http://127.0.0.1:{http_port}"
        wait_serving(announcement["address"], process)
        # the embedded chain answers JSON-RPC and holds the registry that up deployed
        from registry_client.client import RegistryClient

        registry = RegistryClient(RegistryClient.web3_for(announcement["chain_url"]), announcement["registry"])
        assert registry.deployed_code_matches() and registry.is_attester(announcement["attester"])
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def test_server_flag_before_or_after_the_command(server: RunningServer) -> None:
    before = cli("--server", server.address, "jobs", "list", "--json")
    assert before.returncode == 0, before.stderr
    assert "jobs" in json.loads(before.stdout) or json.loads(before.stdout) == {}
    after = cli("jobs", "list", "--json", "--server", server.address)
    assert after.returncode == 0, after.stderr
    # the command's own flag wins over the one before it
    nobody = cli("--server", server.address, "jobs", "list", "--server", "127.0.0.1:1", "--json")
    assert json.loads(nobody.stdout)["error"]["reason"] == "SERVER_UNAVAILABLE"


def test_error_messages_name_the_cli_flags(server: RunningServer, models: Models, tmp_path) -> None:
    needs = cli("submit", str(models.f16), "-q", "IQ2_XXS", server=server)
    assert needs.returncode == 1 and "IMATRIX_REQUIRED" in needs.stderr
    assert "--imatrix" in needs.stderr and "imatrix_path" not in needs.stderr
    out = models.root / "cli-flags"
    out.mkdir(exist_ok=True)
    (out / "tiny-Q4_0.gguf").write_bytes(b"a file of the user's, in the way")
    again = cli("submit", str(models.f16), "-q", "Q4_0", "--out", str(out), server=server)
    assert again.returncode == 1 and "OUTPUT_EXISTS" in again.stderr
    assert "--overwrite" in again.stderr and "--out" in again.stderr and "output_dir" not in again.stderr
    requantize = cli("estimate", str(models.q8_0), "-q", "Q4_0", "--json", server=server)
    message = json.loads(requantize.stdout)["error"]["message"]
    assert "--allow-requantize" in message and "allow_requantize" not in message
    home = {"QUANTLEDGER_HOME": str(tmp_path / "home")}
    no_ram = cli("recommend", "--params", "8B", "--local", env=home)
    assert no_ram.returncode == 1 and "--ram" in no_ram.stderr and "ram_bytes" not in no_ram.stderr
    negative = cli("recommend", "--params", "8B", "--ram", "8G", "--batch", "-1", "--local", env=home)
    assert "--batch" in negative.stderr and "batch_size" not in negative.stderr


def test_recommend_a_missing_bare_file_name_is_source_not_found(tmp_path) -> None:
    env = {"QUANTLEDGER_HOME": str(tmp_path / "home")}
    argv = [QUANTLEDGER or "quantledger"]
    for name in ("missing.gguf", "./missing.gguf", "missing"):
        done = subprocess.run(
            [*argv, "recommend", name, "--ram", "8G", "--local", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
            cwd=tmp_path,
        )
        assert done.returncode == 1, done.stderr
        assert json.loads(done.stdout)["error"]["reason"] == "SOURCE_NOT_FOUND", (name, done.stdout)


def test_a_reader_that_goes_away_stops_the_cli_quietly(server: RunningServer, models: Models) -> None:
    from quantledger.v1 import quantize_service_pb2 as pb

    (models.root / "pipe").mkdir(exist_ok=True)
    job = server.stub().CreateQuantizeJob(
        pb.CreateQuantizeJobRequest(
            job=pb.QuantizeJob(
                source=str(models.f16),
                quant_types=["Q4_0"],
                options=pb.QuantizeOptions(output_dir=str(models.root / "pipe")),
            )
        )
    )
    argv = [QUANTLEDGER or "quantledger", "jobs", "show", job.name, "--server", server.address]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `| head -0` would: the reader is gone before the first line
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr  # 128 + SIGPIPE, as a shell reports for `yes | head -1`
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_an_unreadable_setting_is_config_invalid_and_the_cli_exits_1_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    from quantledger.config import Settings
    from quantledger.errors import QuantledgerError

    monkeypatch.setenv("QUANTLEDGER_HOME", str(tmp_path))
    monkeypatch.setenv("QUANTLEDGER_PORT", "fifty")
    with pytest.raises(QuantledgerError) as caught:  # library code raises a typed error, never SystemExit
        Settings.from_env()
    assert (caught.value.code, caught.value.reason) == ("FAILED_PRECONDITION", "CONFIG_INVALID")
    assert caught.value.metadata == {"variable": "QUANTLEDGER_PORT"}
    # the CLI writes to the sys.stdout of the moment, not to the one that was current when it was imported
    assert cli_main.main(["recommend", "--params", "8B", "--local", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["reason"] == "CONFIG_INVALID"
    assert "error: CONFIG_INVALID: QUANTLEDGER_PORT must be an integer, got 'fifty'" in err
