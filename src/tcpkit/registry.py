"""The service registry: every service tcpkit can serve, found by name.

Services come from the entry-point group ``tcpkit.services`` — the built-in
``reverse`` and ``factor`` register there exactly as a third-party package does
(SPEC §6), so nothing about the built-ins is special.  When tcpkit runs from a
source tree without installed metadata the built-ins are added directly.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points

from tcpkit.service import Service

GROUP = "tcpkit.services"
log = logging.getLogger("tcpkit")


class UnknownService(LookupError):
    """No registered service has that name."""


@cache
def services() -> dict[str, Service]:
    """All registered services by name, built-ins first."""
    found: dict[str, Service] = {}
    for entry in entry_points(group=GROUP):
        try:
            service = entry.load()
        except Exception as exc:  # a broken plug-in must not take tcpkit down
            log.warning("cannot load service %r from %s: %s", entry.name, entry.value, exc)
            continue
        if not isinstance(service, Service):
            log.warning("entry point %r is not a tcpkit.Service; ignored", entry.name)
            continue
        found[service.name] = service
    _add_builtins(found)
    return found


def _add_builtins(found: dict[str, Service]) -> None:
    from tcpkit.services import factor, reverse

    for service in (reverse.SERVICE, factor.SERVICE):
        found.setdefault(service.name, service)


def get(name: str) -> Service:
    """The service called ``name``, or UnknownService with the known names."""
    try:
        return services()[name]
    except KeyError:
        known = ", ".join(sorted(services()))
        raise UnknownService(f"unknown service {name!r} (known: {known})") from None
