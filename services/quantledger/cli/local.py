"""``quantledger quantize``: the job engine in this process, no server.

The engine runs with an in-memory job store (so it never races a server over the data dir's
queue) and with the file system as the allowed root: the user acts on their own files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib

from quantledger.cli.render import ProgressBar
from quantledger.config import Settings
from quantledger.grpc_api.converters import job_to_proto, spec_from_proto
from quantledger.jobs.engine import JobEngine
from quantledger.jobs.store import SqliteJobStore
from quantledger.v1 import quantize_service_pb2 as pb


async def _run(request: pb.QuantizeJob, bar: ProgressBar | None) -> pb.QuantizeJob:
    settings = dataclasses.replace(Settings.from_env(), allowed_roots=(pathlib.Path("/"),))
    engine = JobEngine(settings, SqliteJobStore(":memory:"))
    await engine.start()
    try:
        job = await engine.create(spec_from_proto(request))
        last = job_to_proto(job)
        async for snapshot in engine.watch(job.id):
            last = job_to_proto(snapshot)
            if bar is not None:
                bar.update(last)
        return last
    finally:
        if bar is not None:
            bar.close()
        await engine.shutdown()


def quantize_locally(request: pb.QuantizeJob, *, show_progress: bool) -> pb.QuantizeJob:
    """Run one job to its end in this process and return its final snapshot."""
    return asyncio.run(_run(request, ProgressBar() if show_progress else None))
