"""The service registry: every service tcpkit can serve, found by name.

Services come from the entry-point group ``tcpkit.services`` — the built-in
``reverse`` and ``factor`` register there exactly as a third-party package does
(SPEC §6), so nothing about the built-ins is special.  When tcpkit runs from a
source tree without installed metadata the built-ins are added directly.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points

from tcpkit.service import Service

GROUP = "tcpkit.services"
log = logging.getLogger("tcpkit")


class UnknownService(LookupError):
    """No registered service has that name."""


BUILTINS = {"reverse": "tcpkit.services.reverse", "factor": "tcpkit.services.factor"}


@cache
def services() -> dict[str, Service]:
    """All registered services by name, built-ins first."""
    found: dict[str, Service] = {}
    for entry in entry_points(group=GROUP):
        service = _load(entry)
        if service is not None:
            found[service.name] = service
    for name in BUILTINS:
        found.setdefault(name, _builtin(name))
    return found


@cache
def get(name: str) -> Service:
    """The service called ``name``, or UnknownService with the known names.

    Only that service's module is imported: a server that runs ``reverse``
    never loads the factor engine (and its processes stay small).
    """
    for entry in entry_points(group=GROUP, name=name):
        service = _load(entry)
        if service is not None and service.name == name:
            return service
    if name in BUILTINS:
        return _builtin(name)
    try:
        return services()[name]
    except KeyError:
        known = ", ".join(sorted(services()))
        raise UnknownService(f"unknown service {name!r} (known: {known})") from None


def _load(entry: EntryPoint) -> Service | None:
    try:
        service = entry.load()
    except Exception as exc:  # a broken plug-in must not take tcpkit down
        log.warning("cannot load service %r from %s: %s", entry.name, entry.value, exc)
        return None
    if not isinstance(service, Service):
        log.warning("entry point %r is not a tcpkit.Service; ignored", entry.name)
        return None
    return service


def _builtin(name: str) -> Service:
    """A built-in service, for a source tree run without installed metadata."""
    service: Service = import_module(BUILTINS[name]).SERVICE
    return service
