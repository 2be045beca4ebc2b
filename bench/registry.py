"""What the registry costs: gas, throughput, lookup latency, and verify_file against sha256sum.

    python bench/registry.py [--verify-gb 1.0] [--registrations 200] [--lookups 200] [--restart 1000]

1. gas of register (first file of a new source, a further file of a known source, a second attester of
   the same file), registerBatch per record (10 and 64; known and new sources) and revoke, on the
   embedded chain (py-evm) and on anvil;
2. registrations per second (one transaction each, receipts awaited) and verify() latency p50/p99 over
   JSON-RPC on both chains;
3. restart of the embedded chain after --restart registrations: kill -9, then seconds until it answers;
4. verify_file of a --verify-gb GGUF (page cache warm) as a ratio to `sha256sum` of the same file
   (target <= 1.1), median of 3 runs each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from eth_account import Account

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import free_port  # noqa: E402

from quantledger.registry.verify import verify_file  # noqa: E402
from registry_client.client import RegistryClient  # noqa: E402
from registry_client.errors import RegistryUnavailable  # noqa: E402
from registry_client.records import Registration  # noqa: E402

ANVIL = REPO / "tests" / "node" / "node_modules" / ".bin" / "anvil"
ANVIL_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def registration(name: str, source: str = "bench source") -> Registration:
    return Registration(digest(name), digest(source), digest("p " + name), "Q4_K_M", "bench", 15, 3_300, 1_000)


def wait_for(url: str, process: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    while True:
        try:
            RegistryClient.web3_for(url, timeout=2)
            return time.monotonic() - started
        except RegistryUnavailable:
            if process.poll() is not None:
                raise SystemExit(f"chain at {url} exited") from None
            time.sleep(0.05)


def start_embedded(directory: pathlib.Path, port: int, funded: list[str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "registry_client.chain", "--data-dir", str(directory), "--port", str(port)]
    for address in funded:
        argv += ["--fund", address]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def gas_table(url: str, keys: list[str], tag: str) -> dict[str, float]:
    w3 = RegistryClient.web3_for(url)
    admin = RegistryClient.deploy(w3, Account.from_key(keys[0]))
    second = RegistryClient(w3, admin.address, Account.from_key(keys[1]))
    admin.grant_attester(second.attester)
    admin.register(registration(f"{tag} warm-up", "warm source"))  # interns the type, tool and revision
    gas = {
        "register, first file of a new source": admin.register(registration(f"{tag} a", "new source")).gas_used,
        "register, further file of a known source": admin.register(registration(f"{tag} b", "new source")).gas_used,
        "register, second attester of the same file": second.register(registration(f"{tag} b", "new source")).gas_used,
    }
    for size in (10, 64):
        known = admin.register_batch([registration(f"{tag} k{size} {i}", "new source") for i in range(size)])
        fresh = admin.register_batch([registration(f"{tag} n{size} {i}", f"s{size} {i}") for i in range(size)])
        gas[f"registerBatch of {size}, known source, per record"] = known.gas_used / size
        gas[f"registerBatch of {size}, new sources, per record"] = fresh.gas_used / size
    gas["revoke"] = admin.revoke(digest(f"{tag} a"), "bench").gas_used
    return gas


def throughput(url: str, key: str, count: int, lookups: int) -> dict[str, float]:
    w3 = RegistryClient.web3_for(url)
    client = RegistryClient.deploy(w3, Account.from_key(key))
    started = time.monotonic()
    for i in range(count):
        client.register(registration(f"tp {i}"))
    rate = count / (time.monotonic() - started)
    latencies = []
    for i in range(lookups):
        begun = time.perf_counter()
        client.verify(digest(f"tp {i % count}"), client.attester)
        latencies.append(time.perf_counter() - begun)
    latencies.sort()
    return {
        "registrations/s": rate,
        "verify p50 ms": 1000 * statistics.median(latencies),
        "verify p99 ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def restart(count: int) -> dict[str, float]:
    account = Account.from_key(b"\x05" * 32)
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        chain = start_embedded(pathlib.Path(directory), port, [account.address])
        wait_for(url, chain)
        client = RegistryClient.deploy(RegistryClient.web3_for(url), account)
        begun = time.monotonic()
        for i in range(count):  # one transaction (one block) each: the worst case for a replay
            client.register(registration(f"r {i}"))
        seconds_to_fill = time.monotonic() - begun
        blocks = client.w3.eth.block_number
        chain.send_signal(signal.SIGKILL)
        chain.wait()
        chain = start_embedded(pathlib.Path(directory), port, [account.address])
        seconds = wait_for(url, chain)
        reader = RegistryClient(RegistryClient.web3_for(url), client.address)
        assert reader.attestation_count(digest(f"r {count - 1}")) == 1
        journal_mb = (pathlib.Path(directory) / "journal.jsonl").stat().st_size / 1e6
        snapshot_mb = (pathlib.Path(directory) / "state.snapshot").stat().st_size / 1e6
        chain.send_signal(signal.SIGTERM)
        chain.wait()
    return {
        "registrations": count,
        "blocks": blocks,
        "registrations/s while filling": count / seconds_to_fill,
        "ready after kill -9 (s)": seconds,
        "journal MB": journal_mb,
        "snapshot MB": snapshot_mb,
    }


def write_gguf(path: pathlib.Path, size_gb: float) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(1)
    elements = int(size_gb * (1 << 30)) // 2
    rows = elements // 4096
    writer.add_tensor_info("blob.weight", (rows, 4096), np.dtype(np.float16), rows * 4096 * 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    chunk = np.random.default_rng(1).integers(0, 2**16, size=(1024, 4096), dtype=np.uint16).tobytes()
    with open(path, "ab") as handle:
        handle.write(b"\0" * (-handle.tell() % 32))
        for start in range(0, rows, 1024):
            handle.write(chunk[: min(1024, rows - start) * 4096 * 2])


def verify_ratio(url: str, key: str, size_gb: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=str(REPO / "bench")) as directory:
        path = pathlib.Path(directory) / "big.gguf"
        write_gguf(path, size_gb)
        client = RegistryClient.deploy(RegistryClient.web3_for(url), Account.from_key(key))
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        size = path.stat().st_size
        client.register(Registration(sha, digest("src"), digest("prov"), "F16", "bench", 1, size, size))
        ours, theirs, openssl = [], [], []
        for _ in range(3):
            path.read_bytes()  # page cache warm for both
            begun = time.perf_counter()
            result = verify_file(client, path)
            ours.append(time.perf_counter() - begun)
            assert result.verdict.value == "VALID", result
            begun = time.perf_counter()
            subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
            theirs.append(time.perf_counter() - begun)
            begun = time.perf_counter()
            subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, capture_output=True)
            openssl.append(time.perf_counter() - begun)
    return {
        "file GB": size / 1e9,
        "verify_file s": statistics.median(ours),
        "sha256sum s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "openssl dgst -sha256 s": statistics.median(openssl),
        "ratio to openssl": statistics.median(ours) / statistics.median(openssl),
    }


class _Done(Exception):
    """--only-verify: skip the rest."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify-gb", type=float, default=1.0)
    parser.add_argument("--registrations", type=int, default=200)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--restart", type=int, default=1000)
    parser.add_argument("--only-verify", action="store_true", help="just the verify_file comparison (on anvil)")
    args = parser.parse_args()
    results: dict[str, object] = {}
    embedded_keys = ["0x" + "11" * 32, "0x" + "12" * 32]
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        chain = start_embedded(pathlib.Path(directory), port, [Account.from_key(k).address for k in embedded_keys])
        wait_for(url, chain)
        anvil_port = free_port()
        anvil = subprocess.Popen([str(ANVIL), "--port", str(anvil_port)], stdout=subprocess.DEVNULL)
        anvil_url = f"http://127.0.0.1:{anvil_port}"
        wait_for(anvil_url, anvil)
        try:
            if args.only_verify:
                results["verify_file vs sha256sum"] = verify_ratio(anvil_url, ANVIL_KEYS[1], args.verify_gb)
                args.restart = 0
                raise _Done
            results["gas (embedded chain)"] = gas_table(url, embedded_keys, "e")
            results["gas (anvil)"] = gas_table(anvil_url, ANVIL_KEYS, "a")
            results["embedded chain"] = throughput(url, embedded_keys[0], args.registrations, args.lookups)
            results["anvil"] = throughput(anvil_url, ANVIL_KEYS[0], args.registrations, args.lookups)
            results["verify_file vs sha256sum"] = verify_ratio(anvil_url, ANVIL_KEYS[1], args.verify_gb)
        except _Done:
            pass
        finally:
            chain.send_signal(signal.SIGTERM)
            anvil.send_signal(signal.SIGINT)
            chain.wait()
            anvil.wait()
    if args.restart:
        results["embedded chain restart"] = restart(args.restart)
    for section, figures in results.items():
        print(f"\n{section}")
        for name, value in figures.items():  # type: ignore[attr-defined]
            print(f"  {name:<50} {value:>14,.2f}" if isinstance(value, float) else f"  {name:<50} {value:>14,}")
    print("\n" + json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
