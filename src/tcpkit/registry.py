"""The service registry: every service tcpkit can serve, found by name.

Services come from the entry-point group ``tcpkit.services`` — the built-in
``reverse`` and ``factor`` register there exactly as a third-party package does
(SPEC §6), so nothing about the built-ins is special.  When tcpkit runs from a
source tree without installed metadata the built-ins are added directly.

A name with a colon is a service that is not installed, found the way
``uvicorn module:app`` finds an app: ``package.module:SERVICE`` imports the
module (from the current directory too) and takes its attribute.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import cache
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points

from tcpkit.errors import Error
from tcpkit.service import Service

GROUP = "tcpkit.services"
log = logging.getLogger("tcpkit")


class UnknownService(Error, LookupError):
    """No registered service has that name."""


class ServiceSpecError(UnknownService):
    """A ``package.module:ATTRIBUTE`` that does not lead to a Service; says why."""


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
    ``package.module:ATTRIBUTE`` loads a service that is not registered
    (:func:`from_spec`).
    """
    if ":" in name:
        return from_spec(name)
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


def from_spec(spec: str) -> Service:
    """The Service at ``package.module:ATTRIBUTE`` (ATTRIBUTE may be dotted).

    The current directory is put on ``sys.path`` first, as uvicorn does, so a
    ``shout.py`` beside the operator is found without installing it.  Every
    way this can fail — a malformed spec, a module that is missing or fails as
    it loads, a missing attribute, one that is not a Service — raises
    ServiceSpecError with one line saying which.
    """
    module_name, _, attribute = spec.partition(":")
    path = attribute.split(".")
    if not all(part.isidentifier() for part in [*module_name.split("."), *path]):
        raise ServiceSpecError(f"bad service {spec!r}: expected package.module:ATTRIBUTE")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = import_module(module_name)
    except Exception as exc:  # its own error, in one line: the operator fixes the module
        reason = exc if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise ServiceSpecError(f"cannot import {module_name!r} for {spec!r}: {reason}") from None
    for part in path:
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ServiceSpecError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, Service):
        raise ServiceSpecError(f"{spec} is not a tcpkit.Service (it is {type(found).__name__})")
    return found
