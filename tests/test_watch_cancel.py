"""A watcher that goes away (a client closing WatchQuantizeJob, the reproducer's time budget) stops at once,
while the job goes on: engine.watch's wait for the next change must not lose the watcher's cancellation.
Python 3.11's asyncio.wait_for, which that wait used, returned the event's result instead of raising when
the cancellation came as the event was set, which the engine does on every change of a starting job: the
cancelled watch then followed the job to its end (the reproducer's time budget never cancelled anything)."""

from __future__ import annotations

import asyncio
import time

from conftest import Models
from hf_models import write_causal_folder
from test_authorization import ADMIN, run, running_engine, settings_for, spec


def test_a_watch_given_a_deadline_ends_at_it_while_its_job_runs(models: Models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = write_causal_folder(tmp_path / "tiny", "LlamaForCausalLM", hidden=256, ffn=512, layers=2)

    async def scenario() -> None:
        async with running_engine(settings_for(tmp_path, models)) as engine:
            overran = []
            for attempt in range(3):
                job = await engine.create(spec(folder, "Q8_0", skip_quality=True, overwrite=True), principal=ADMIN)

                async def last(job_id: str = job.id) -> object:
                    latest = None
                    async for snapshot in engine.watch(job_id, ADMIN):
                        latest = snapshot
                    return latest

                started = time.monotonic()
                try:
                    await asyncio.wait_for(last(), timeout=0.001)
                    overran.append(attempt)  # the watch ran on to the job's end
                except TimeoutError:
                    assert time.monotonic() - started < 1.0
                    await engine.cancel(job.id, ADMIN)
            assert overran == []

    run(scenario)
