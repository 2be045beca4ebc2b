"""Build the Recommender a server runs: the installed llama.cpp's types, the allowed roots, and the
job store as the source of measured quality and of files a registry digest names."""

from __future__ import annotations

import statistics

from quantledger.config import Settings
from quantledger.jobs.model import JobState
from quantledger.jobs.store import JobStore
from quantledger.quantize.catalogue import catalogue
from quantledger.recommend.service import Recommender


def measured_quality(store: JobStore) -> dict[tuple[str, int], dict[str, float]]:
    """Median measured KL divergence per (architecture, parameter count) and type, over finished jobs."""
    samples: dict[tuple[str, int], dict[str, list[float]]] = {}
    for job in store.with_state(JobState.SUCCEEDED):
        info = job.source_info
        if info is None:
            continue
        for artifact in job.outputs:
            kld = artifact.quality.mean_kl_divergence if artifact.quality is not None else None
            if kld is not None:
                model = (info.architecture, info.parameter_count)
                samples.setdefault(model, {}).setdefault(artifact.quant_type, []).append(kld)
    return {model: {t: statistics.median(v) for t, v in by_type.items()} for model, by_type in samples.items()}


def find_artifact(store: JobStore, digest: str) -> str | None:
    """Path of a file a finished job wrote with this SHA-256 (newest first), or None."""
    for job in reversed(store.with_state(JobState.SUCCEEDED)):
        for artifact in job.outputs:
            if artifact.sha256 == digest:
                return artifact.path
    return None


def make_recommender(settings: Settings, store: JobStore) -> Recommender:
    return Recommender(
        settings.allowed_roots,
        [(t.name, t.file_type) for t in catalogue()],
        find_artifact=lambda digest: find_artifact(store, digest),
        measured_quality=lambda: measured_quality(store),
        quality_marker=lambda: store.state_marker(JobState.SUCCEEDED),
    )
