"""``quantledger worker``: one machine of the pool, running the steps of distributed jobs.

It polls two task queues: the activities (``contract.WORK_QUEUE``: quantize, evaluate, register…; at
most ``--max-parallel`` at once) and the workflows (``contract.JOBS_QUEUE``: the jobs' control flow,
cheap). Any number of workers may run; Temporal hands each step to one of them and, when a worker dies,
hands its step to another once the step's heartbeats stop.

SIGTERM or SIGINT stop taking new steps; steps in flight are cancelled as a shutdown (their llama.cpp
processes killed, their uploads aborted) and Temporal retries them elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from quantledger.config import Settings
from quantledger.distributed import contract
from quantledger.distributed.activities import JobActivities, WorkerContext
from quantledger.distributed.connection import connect_temporal, open_store
from quantledger.distributed.workflow import QuantizeJobWorkflow
from quantledger.registry.wiring import make_registrar

log = logging.getLogger(__name__)
# how soon a heartbeat (and so a cancel) crosses to Temporal; the SDK's default waits up to 30 s
HEARTBEAT_THROTTLE = timedelta(seconds=0.5)
SHUTDOWN_GRACE = timedelta(seconds=5)


def workflow_worker(client: Client) -> Worker:
    """A worker of the jobs' workflows only (frontends run one too: queries and updates never wait)."""
    return Worker(
        client,
        task_queue=contract.JOBS_QUEUE,
        workflows=[QuantizeJobWorkflow],
        graceful_shutdown_timeout=SHUTDOWN_GRACE,
    )


async def run_worker(settings: Settings, *, max_parallel: int = 1, threads: int = 0) -> int:
    """Serve steps until SIGTERM/SIGINT; the exit status."""
    settings.ensure_dirs()
    store = open_store(settings)
    await asyncio.to_thread(store.check)
    client = await connect_temporal(settings)
    registrar = make_registrar(settings)
    context = WorkerContext(settings, store, registrar, threads=threads)
    activities = JobActivities(context)
    steps = Worker(
        client,
        task_queue=contract.WORK_QUEUE,
        activities=activities.all(),
        max_concurrent_activities=max(1, max_parallel),
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        graceful_shutdown_timeout=SHUTDOWN_GRACE,
    )
    flows = workflow_worker(client)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with steps, flows:
        print(
            f"quantledger worker: Temporal {settings.temporal_address} ({settings.temporal_namespace}), "
            f"artifacts {settings.artifacts_uri}, up to {max(1, max_parallel)} steps at once",
            flush=True,
        )
        await stop.wait()
        log.info("worker stopping")
    with contextlib.suppress(Exception):
        context.job_store.close()
    return 0
