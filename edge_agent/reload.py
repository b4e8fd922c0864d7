"""What a reload (SIGHUP) changes: the file is loaded and validated again; an invalid one is
refused with its problems logged, and the running configuration stays. A valid one is applied
in place, as :func:`plan_reload` says: sources that changed (or are new or gone) are restarted
(or started, stopped), lines whose configuration is unchanged keep their engine and its state
(the engine runner decides), and a broker link is reconnected only when that sink's link
settings changed. ``site``, ``storage``, ``prometheus`` and the list of sink names need a
restart: a change to them is logged and not applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from edge_agent.config.schema import AgentConfig, MqttConfig, SourceConfig
from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)

NEEDS_RESTART = ("site", "storage", "prometheus")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    cfg: AgentConfig  # the configuration to run: the new one less what needs a restart
    stop_sources: tuple[str, ...]  # changed or gone: stopped first
    gone_sources: tuple[str, ...]  # of those, the ones no longer configured
    start_sources: tuple[SourceConfig, ...]  # changed or new
    relink: tuple[str, ...]  # sinks whose link settings changed: reconnected


def load_for_reload(path: str) -> AgentConfig | None:
    """The configuration in ``path``, or ``None`` with the reason logged (the caller keeps the
    running one)."""
    from edge_agent.config.loader import load_config  # noqa: PLC0415

    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            log.error("%s", issue)
        log.error(
            "configuration reload refused: %d problem(s) in %s; the running configuration stays",
            len(exc.issues),
            path,
        )
    except OSError as exc:
        log.error("configuration reload refused: cannot read %s: %s", path, exc)
    return None


def _link(c: MqttConfig) -> MqttConfig:
    # publish_interval and qos are applied by the engine runner before the outbox; anything
    # else of a sink is its link's. The sink re-checks the share when publishing, so it
    # reconnects on a share change too.
    return replace(c, publish_interval_s=0.0, qos=0)


def plan_reload(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """What applying ``new`` over the running ``old`` does; logs what is not applied."""
    for key in NEEDS_RESTART:
        if getattr(new, key) != getattr(old, key):
            log.warning("reload: a change of '%s' needs a restart; not applied", key)
    new = replace(new, site=old.site, storage=old.storage, prometheus=old.prometheus)
    if [sc.name for sc in new.mqtt_sinks] != [sc.name for sc in old.mqtt_sinks]:
        log.warning("reload: a change of the list of mqtt sinks needs a restart; not applied")
        new = replace(new, mqtt=old.mqtt, mqtt_extra=old.mqtt_extra)
    old_sources = {sc.name: sc for sc in old.sources}
    new_sources = {sc.name: sc for sc in new.sources}
    stop = tuple(n for n, sc in old_sources.items() if new_sources.get(n) != sc)
    relink = tuple(
        mc.name
        for mc, before in zip(new.mqtt_sinks, old.mqtt_sinks, strict=True)
        if _link(mc) != _link(before)
    )
    return ReloadPlan(
        cfg=new,
        stop_sources=stop,
        gone_sources=tuple(n for n in stop if n not in new_sources),
        start_sources=tuple(sc for n, sc in new_sources.items() if old_sources.get(n) != sc),
        relink=relink,
    )
