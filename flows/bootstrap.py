"""bootstrap: the first model and its gallery, rubber-stamped (nothing to be compatible with)."""

from __future__ import annotations

from typing import Any

from hotswap.components.registry.records import CHAMPION
from hotswap.flows.switch import switch_live
from hotswap.tasks.context import settings_from
from hotswap.tasks.gallery_build import build_first_gallery
from hotswap.tasks.lock import lifecycle_lock
from hotswap.tasks.naming import bootstrap_run_name
from hotswap.tasks.preflight import check_bootstrap_inputs
from hotswap.tasks.quantization import train_codebooks
from hotswap.tasks.registry import resolve_alias
from hotswap.tasks.training import train_first_model
from hotswap.tasks.validation import rubber_stamp
from prefect import flow


class AlreadyBootstrappedError(RuntimeError):
    """A champion exists: bootstrapping again would replace a live model without any check."""


@flow(name="bootstrap", log_prints=True, flow_run_name=bootstrap_run_name)
def bootstrap(overrides: dict[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """Train v1 on the bootstrap classes, bless it, build DPQ codebooks and the first live gallery.

    A first model whose self-test does not clearly beat chance is refused (nothing goes live);
    ``force`` blesses it anyway.
    """
    settings = settings_from(overrides)
    with lifecycle_lock(settings, "bootstrap"):
        champion = resolve_alias(settings, CHAMPION)
        if champion is not None:
            raise AlreadyBootstrappedError(
                f"model {settings.model_name!r} already has a champion (v{champion}); run `hotswap refresh`"
            )
        check_bootstrap_inputs(settings)
        version = train_first_model(settings)
        report = rubber_stamp(settings, version, force=force)
        train_codebooks(settings, version)
        gallery_version = build_first_gallery(settings, version)
        live = switch_live(settings, version, gallery_version)
    return {"version": version, "blessed": report["blessed"], **live}
