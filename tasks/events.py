"""Prefect events hotswap emits, and what the refresh deployment's trigger reads from them.

``hotswap.dataset.registered`` on the resource ``hotswap.dataset.<model name>`` carries the
dataset version and its source in its payload; deployments/prefect.yaml passes both into the
refresh deployment's parameters (Jinja: ``{{ event.payload.dataset_version }}``).
"""

from __future__ import annotations

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.registered import DatasetRegistration
from prefect.events import emit_event
from prefect.events.worker import EventsWorker

DATASET_REGISTERED = "hotswap.dataset.registered"


def dataset_resource_id(settings: HotswapSettings) -> str:
    return f"hotswap.dataset.{settings.model_name}"


def emit_dataset_registered(settings: HotswapSettings, registration: DatasetRegistration) -> str | None:
    """Send the event and wait until it left this process; returns the event id (None if not sent)."""
    event = emit_event(
        event=DATASET_REGISTERED,
        resource={
            "prefect.resource.id": dataset_resource_id(settings),
            "prefect.resource.name": f"dataset {registration.version[:6]} of {settings.model_name}",
            "hotswap.model": settings.model_name,
            "hotswap.gallery": settings.gallery_name,
        },
        payload={
            "dataset_version": registration.version,
            "data_source": registration.source,
            "items": registration.items,
            "classes": registration.classes,
            "mlflow_run_id": registration.run_id,
        },
    )
    EventsWorker.drain_all()  # a CLI process exits right after: flush the event first
    return None if event is None else str(event.id)
