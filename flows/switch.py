"""Promotion and the gallery switch as one all-or-nothing unit.

Inside one Prefect transaction: move the aliases (champion ← version, previous ← old champion),
point the gallery's CURRENT at the version built for it, then health-check the live pair. If any
step fails, the finished steps' rollback hooks put the aliases and CURRENT back as they were.
"""

from __future__ import annotations

from prefect import flow
from prefect.transactions import transaction

from components.settings import HotswapSettings
from tasks.gallery import check_live_gallery, publish_gallery
from tasks.registry import promote_model


@flow(name="switch-live", flow_run_name="switch live to v{version} / gallery {gallery_version}")
def switch_live(settings: HotswapSettings, version: str, gallery_version: str) -> dict[str, str]:
    """Make ``version`` the champion and ``gallery_version`` the live gallery, or neither."""
    with transaction():
        aliases = promote_model(settings, version)
        publish_gallery(settings, gallery_version)
        check_live_gallery(settings, version, gallery_version)
    return {"champion": aliases.get("champion", version), "gallery_version": gallery_version}
