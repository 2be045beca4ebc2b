"""Turn llama.cpp's quantization log into structured events.

llama.cpp has no progress callback. While quantizing it logs, per tensor and in several fragments:

    [   3/  21] token_embd.weight  - [   256,    300,      1,      1], type =    f16,
    converting to q4_K ..                                   (real run, quantized tensors only)
    size =     0.15 MiB ->     0.04 MiB                     (real run)
    size =     0.15 MiB ->     0.04 MiB (q4_K)              (dry run)
    size =    0.001 MiB                                     (tensor copied as it is)

a warning per tensor that falls back to another type, and at the end
``quant size = 0.78 MiB (4.90 BPW)`` and ``WARNING: 13 of 21 tensor(s) required fallback
quantization``; a dry run of a type that would need an importance matrix ends with "dry run
completed successfully, but actually completing this quantization will require an imatrix!".
``LogParser`` takes the fragments as the log callback delivers them and returns events as soon as
they are known, so progress can name the tensor being worked on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_START = re.compile(
    r"^\[\s*(?P<index>\d+)/\s*(?P<total>\d+)\]\s+(?P<name>\S+)\s+-\s+\[(?P<shape>[^\]]*)\],\s*"
    r"type\s*=\s*(?P<type>\w+),"
)
_CONVERTING = re.compile(r"converting to (?P<type>\w+)")
_SIZE = re.compile(r"size\s*=\s*(?P<before>[\d.]+) MiB(?:\s*->\s*(?P<after>[\d.]+) MiB)?(?:\s*\((?P<type>\w+)\))?\s*$")
_FALLBACK = re.compile(
    r"warning:\s*(?P<name>\S+)\s+-\s+ncols\s+(?P<cols>\d+) not divisible by (?P<block>\d+) "
    r"\(required for type\s+(?P<wanted>\w+)\)(?:\s*->\s*falling back to\s+(?P<to>\w+))?"
)
_QUANT_SIZE = re.compile(r"quant size\s*=\s*(?P<mib>[\d.]+) MiB(?: \((?P<bpw>[\d.]+) BPW\))?")
_FALLBACK_TOTAL = re.compile(r"(?P<count>\d+) of (?P<total>\d+) tensor\(s\) required fallback")
_DRY_RUN_NEEDS_IMATRIX = "will require an imatrix"
# what llama.cpp's error says when a real run needs an importance matrix it was not given
IMATRIX_ERROR = "requires an imatrix"

# ggml log levels (ggml.h): 1 debug, 2 info, 3 warn, 4 error, 5 cont.
LEVEL_ERROR = 4


@dataclass
class LogParser:
    """Feed llama.cpp log fragments in; take events out."""

    _line: str = ""
    _current: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    def feed(self, level: int, text: str) -> list[dict[str, Any]]:
        """Consume one fragment of the log and return the events it completes."""
        events: list[dict[str, Any]] = []
        self._line += text
        if self._current is None:
            start = _START.match(self._line)
            if start is not None:
                self._current = {
                    "event": "tensor_start",
                    "index": int(start["index"]),
                    "total": int(start["total"]),
                    "name": start["name"],
                    "shape": [int(x) for x in start["shape"].replace(" ", "").split(",") if x],
                    "source_type": start["type"].upper(),
                }
                events.append(dict(self._current))
        if not self._line.endswith("\n"):
            return events
        line, self._line = self._line.strip(), ""
        if level == LEVEL_ERROR and line:
            self.errors.append(line)
        events.extend(self._complete_line(line))
        return events

    def _complete_line(self, line: str) -> list[dict[str, Any]]:
        fallback = _FALLBACK.search(line)
        if fallback is not None:
            return [
                {
                    "event": "fallback",
                    "name": fallback["name"],
                    "wanted": fallback["wanted"].upper(),
                    "to": (fallback["to"] or "").upper(),
                }
            ]
        if self._current is not None:
            size = _SIZE.search(line)
            if size is not None:
                converting = _CONVERTING.search(line)
                target = size["type"] or (converting["type"] if converting else None)
                done = {
                    "event": "tensor_done",
                    "index": self._current["index"],
                    "total": self._current["total"],
                    "name": self._current["name"],
                    "target_type": (target or self._current["source_type"]).upper(),
                    "mib_before": float(size["before"]),
                    "mib_after": float(size["after"] or size["before"]),
                }
                self._current = None
                return [done]
            return []
        quant = _QUANT_SIZE.search(line)
        if quant is not None:
            return [
                {
                    "event": "quant_size",
                    "mib": float(quant["mib"]),
                    "bits_per_weight": float(quant["bpw"]) if quant["bpw"] else None,
                }
            ]
        if _DRY_RUN_NEEDS_IMATRIX in line:
            return [{"event": "requires_imatrix"}]
        total = _FALLBACK_TOTAL.search(line)
        if total is not None:
            return [{"event": "fallback_total", "count": int(total["count"]), "total": int(total["total"])}]
        return []


def fallback_count(events: list[dict[str, Any]]) -> int:
    """Tensors llama.cpp quantized to another type than planned: its own total when it logged one."""
    totals = [e["count"] for e in events if e.get("event") == "fallback_total"]
    if totals:
        return int(totals[-1])
    return sum(1 for e in events if e.get("event") == "fallback")
