"""The machine a model should run on: devices, system RAM, cores, and tier presets.

Bandwidths a request leaves out come from the kind and size of the device (typical parts of that
class); they only change the predicted speed, never whether something fits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantledger.errors import InvalidArgument

GIB = 1 << 30
MIB = 1 << 20
DEVICE_KINDS = ("cpu", "cuda", "metal")
# What llama.cpp and the driver take on a GPU before the model: context, cuBLAS/Metal workspaces.
GPU_RESERVE = 350 * MIB
# What llama.cpp's own fitter (--fit) leaves free on every GPU: room for other programs and growth.
GPU_MARGIN = 1 * GIB
# What the process takes in RAM besides the model (runtime, buffers).
RAM_RESERVE = 150 * MIB


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" | "metal" (a "cpu" device is the machine's RAM)
    memory_bytes: int
    bandwidth: float = 0.0  # bytes per second; 0 = typical for the kind and size
    name: str = ""

    def effective_bandwidth(self) -> float:
        if self.bandwidth > 0:
            return self.bandwidth
        gib = self.memory_bytes / GIB
        if self.kind == "metal":
            return 800e9 if gib >= 128 else 400e9 if gib >= 48 else 200e9
        for limit, bandwidth in ((8.5, 272e9), (12.5, 360e9), (16.5, 448e9), (24.5, 936e9), (48.5, 864e9)):
            if gib <= limit:
                return bandwidth
        return 2000e9


@dataclass(frozen=True)
class Machine:
    ram_bytes: int
    cores: int = 8
    gpus: tuple[Device, ...] = ()
    unified_memory: bool = False
    cpu_bandwidth: float = 0.0  # bytes per second; 0 = typical for the core count

    def check(self) -> None:
        if self.ram_bytes <= 0:
            raise InvalidArgument(f"system RAM must be positive, not {self.ram_bytes} bytes")
        if self.cores <= 0:
            raise InvalidArgument(f"the core count must be positive, not {self.cores}")
        if self.cpu_bandwidth < 0:
            raise InvalidArgument("the CPU memory bandwidth must not be negative")
        for gpu in self.gpus:
            if gpu.kind not in ("cuda", "metal"):
                raise InvalidArgument(f"unknown device kind {gpu.kind!r}; known: {', '.join(DEVICE_KINDS)}")
            if gpu.memory_bytes <= 0:
                raise InvalidArgument(f"the memory of a {gpu.kind} device must be positive, not {gpu.memory_bytes}")
            if gpu.bandwidth < 0:
                raise InvalidArgument(f"the bandwidth of a {gpu.kind} device must not be negative")

    def usable_ram(self) -> int:
        """RAM the process may take: the operating system and other programs keep the rest."""
        return self.ram_bytes - max(GIB, self.ram_bytes * 15 // 100)

    def effective_cpu_bandwidth(self) -> float:
        if self.cpu_bandwidth > 0:
            return self.cpu_bandwidth
        if self.unified_memory and self.gpus:
            return self.gpus[0].effective_bandwidth() * 0.6
        return 40e9 if self.cores <= 8 else 80e9 if self.cores <= 32 else 200e9

    def describe(self) -> str:
        parts = [f"{self.ram_bytes / GIB:.0f} GiB RAM", f"{self.cores} cores"]
        parts += [f"{g.kind} {g.memory_bytes / GIB:.0f} GiB" + (f" ({g.name})" if g.name else "") for g in self.gpus]
        if self.unified_memory:
            parts.append("unified memory")
        return ", ".join(parts)


TIERS: dict[str, Machine] = {
    "laptop": Machine(ram_bytes=16 * GIB, cores=8, cpu_bandwidth=60e9),
    "workstation": Machine(
        ram_bytes=64 * GIB,
        cores=16,
        gpus=(Device("cuda", 24 * GIB, 936e9),),
        cpu_bandwidth=80e9,
    ),
    "server": Machine(
        ram_bytes=256 * GIB,
        cores=64,
        gpus=(Device("cuda", 80 * GIB, 2000e9),),
        cpu_bandwidth=200e9,
    ),
    "enterprise": Machine(
        ram_bytes=1024 * GIB,
        cores=128,
        gpus=(Device("cuda", 80 * GIB, 3350e9),) * 8,
        cpu_bandwidth=300e9,
    ),
}


def tier_machine(name: str) -> Machine:
    key = name.strip().lower()
    if key not in TIERS:
        raise InvalidArgument(f"unknown tier {name!r}; known tiers: {', '.join(TIERS)}", tier=name)
    return TIERS[key]


def with_overrides(
    base: Machine,
    *,
    ram_bytes: int = 0,
    cores: int = 0,
    gpus: tuple[Device, ...] | None = None,
    unified: bool | None = None,
) -> Machine:
    """A tier with the parts a request names replaced."""
    return replace(
        base,
        ram_bytes=ram_bytes or base.ram_bytes,
        cores=cores or base.cores,
        gpus=base.gpus if gpus is None else gpus,
        unified_memory=base.unified_memory if unified is None else unified,
    )
