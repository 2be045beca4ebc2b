"""``quantledger imatrix``: compute an importance matrix in this process's own llama.cpp worker.

    quantledger imatrix model-f16.gguf -o model.imatrix.gguf
    quantledger imatrix model-f16.gguf --calibration my-text.txt --chunks 100 --ctx 512 -o model.imatrix.gguf
    quantledger imatrix model-f16.gguf -o model.imatrix.dat            # the legacy format, by its suffix

The model runs over the calibration text (the one quantledger ships unless ``--calibration`` names
another) in a worker process, as llama-imatrix does it (quantize/calibrate.py); the file is llama.cpp's
GGUF imatrix format (or ``.dat``), usable by ``submit``/``quantize --imatrix`` and by llama-quantize.
No server is involved: the command reads and writes the user's own files.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from quantledger.cli.render import human_bytes, print_json
from quantledger.errors import InvalidArgument, SourceNotFound
from quantledger.quantize.runner import WorkerProcess


def add_imatrix_parser(commands: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = commands.add_parser("imatrix", help="compute an importance matrix with llama.cpp from calibration text")
    add_common(parser)
    parser.add_argument("source", metavar="SOURCE", help="a GGUF model (F32, F16 or BF16 gives the best matrix)")
    parser.add_argument(
        "--calibration", default="", metavar="FILE", help="UTF-8 calibration text (default: the one quantledger ships)"
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the imatrix file to write")
    parser.add_argument(
        "--output-format",
        choices=("gguf", "dat"),
        default=None,
        help="gguf (llama.cpp's current format) or dat (legacy); default: by OUT's suffix, gguf unless .dat",
    )
    parser.add_argument("--chunks", type=int, default=0, help="chunks of calibration text to run (default: all)")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512, as llama-imatrix)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all)")
    parser.add_argument(
        "--process-output", action="store_true", help="collect output.weight too (llama-imatrix --process-output)"
    )


def _checked_file(path: str, what: str) -> str:
    absolute = os.path.abspath(path)
    if not os.path.isfile(absolute):
        raise SourceNotFound(f"{what} {path} does not exist", path=absolute)
    return absolute


class _Bar:
    """One self-rewriting line on stderr: chunks done of all and the time left."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") != "calibrate_progress":
            return
        done, total = int(event["done"]), int(event["total"])
        elapsed = time.monotonic() - self._start
        eta = elapsed / done * (total - done) if done else 0.0
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\rcalibrating [{bar}] {done}/{total} chunks  ETA {eta:.0f} s ")
        sys.stderr.flush()

    @staticmethod
    def close() -> None:
        sys.stderr.write("\n")


def cmd_imatrix(args: argparse.Namespace) -> int:
    model = _checked_file(args.source, "model")
    request: dict[str, Any] = {
        "mode": "calibrate",
        "model": model,
        "calibration_path": _checked_file(args.calibration, "calibration text") if args.calibration else "",
        "output": os.path.abspath(args.output),
        "output_format": args.output_format or ("dat" if args.output.endswith(".dat") else "gguf"),
        "chunks": args.chunks,
        "n_ctx": args.ctx,
        "threads": args.threads,
        "process_output": args.process_output,
    }
    if args.chunks < 0 or args.ctx < 16:
        raise InvalidArgument("--chunks must be 0 (all) or more, and --ctx at least 16 tokens")
    bar = None if args.json else _Bar()
    with tempfile.NamedTemporaryFile(prefix="quantledger-imatrix-", suffix=".log", delete=False) as log:
        log_path = log.name
    try:
        result = asyncio.run(WorkerProcess(request, log_path).run(bar or (lambda _event: None)))
    finally:
        if bar is not None:
            bar.close()
    [made] = result.of("imatrix")
    made = {k: v for k, v in made.items() if k != "event"}
    os.unlink(log_path)  # kept when the worker failed: its error names it
    if args.json:
        print_json(made)
        return 0
    print(
        f"wrote {made['path']} ({human_bytes(made['size_bytes'])}, {made['entries']} tensors, "
        f"{made['chunks']} chunks of {made['chunk_size']} tokens, dataset {made['dataset']})"
    )
    print(f"sha256 {made['sha256']}")
    return 0
