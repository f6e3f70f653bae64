"""``tcpkit serve --config FILE``: the serve options in a TOML file, a table per service.

Every ``serve`` option may be given under its long name (``mode = "thread"``,
``max-connections = 100``); each ``[services.NAME]`` table names a service to
serve, with its own ``listen`` (a string or a list of endpoints) and its own
limits (:data:`PER_SERVICE`); every serving mode obeys its ``max-line``,
``idle-timeout``, ``max-connections``, per-IP limits, access lists and PROXY
trust (counted and applied per service: see :mod:`tcpkit.serving.guards.gate`).
A key a table leaves out is the top level's (or the command line's); one it
sets replaces that value for its service (an ``allow`` list too: it is not
added to the top level's).  Options given on the command line win over the
file's top level.  Values go through the same argparse types as the flags, so a
file and a command line are checked by one set of rules.

Mistakes (a key that is no option, a wrong type, a value the option refuses,
a conflict) are :class:`ConfigError`, one line naming the file, the line and
the key.  ``tomllib`` reports no positions for keys, so the line is found by a
scan of the file's text for the key (first in its table): good for the files
people write, and for an odd one (a key in an inline table, a quoted dotted
key) the message still names the table and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tcpkit.errors import Error

if TYPE_CHECKING:
    from tcpkit.serving.config import Limits, Listener
    from tcpkit.serving.guards.tls import ServerTLS

# Options a [services.NAME] table may set for its service alone (every mode applies them).
PER_SERVICE = ("listen", "max-connections", "idle-timeout", "max-line", "tls-cert", "tls-key",
               "max-per-ip", "rate-per-ip", "allow", "deny", "quiet-deny", "proxy-protocol")
# ...of which these count clients across connections: meaningless for --inetd's one.
NOT_WITH_INETD = ("max-per-ip", "rate-per-ip")
# Options that make no sense in a file.
NOT_IN_FILE = ("config", "check-config", "help")


class ConfigError(Error):
    """A mistake in the config file; the message names the file, line and key."""


@dataclass
class ConfigFile:
    """What a config file sets: options for the whole server, and per service."""

    path: str
    options: dict[str, Any] = field(default_factory=dict)  # dest -> parsed value
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> dest -> value
    checker: _Checker | None = field(default=None, repr=False)  # for errors found later

    def error(self, key: str, section: str | None, message: str) -> ConfigError:
        """A mistake found after loading, named by file, line and key like the others."""
        if self.checker is None:
            return ConfigError(f"{self.path}: {key}: {message}")
        return self.checker.error(key, section, message)


def load(path: str, parser: argparse.ArgumentParser) -> ConfigFile:
    """Read and check ``path`` against the options of ``parser`` (the serve parser)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    text = raw.decode("utf-8", "replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    actions = {action.option_strings[0][2:]: action for action in parser._actions
               if action.option_strings and action.option_strings[0].startswith("--")}
    checker = _Checker(path, text, actions)
    config = ConfigFile(path, checker=checker)
    services = data.pop("services", {})
    if not isinstance(services, dict):
        raise checker.error("services", None, "must be a table of [services.NAME] tables")
    for key, value in data.items():
        dest = checker.dest(key, None)
        config.options[dest] = checker.value(key, value, None)
    if services and "listen" in data:
        raise checker.error("listen", None, "conflicts with [services.*] tables: give each "
                                            "service its own listen")
    for name, table in services.items():
        section = f"services.{name}"
        if not isinstance(table, dict):
            raise checker.error(name, "services", "must be a table ([services.NAME])")
        settings: dict[str, Any] = {}
        for key, value in table.items():
            if key not in PER_SERVICE:
                raise checker.error(key, section, "is not a per-service option (one of: "
                                                  f"{', '.join(PER_SERVICE)})")
            dest = checker.dest(key, section)
            settings[dest] = checker.value(key, value, section)
        if bool(settings.get("tls_cert")) != bool(settings.get("tls_key")):
            raise checker.error("tls-cert" if "tls_key" not in settings else "tls-key",
                                section, "tls-cert and tls-key must be given together")
        config.services[name] = settings
    return config


class _Checker:
    """Turns a file's key and value into an option's dest and parsed value, or says why not."""

    def __init__(self, path: str, text: str,
                 actions: dict[str, argparse.Action]) -> None:
        self.path, self.lines, self.actions = path, text.splitlines(), actions

    def dest(self, key: str, section: str | None) -> str:
        action = self.actions.get(key)
        if action is None or key in NOT_IN_FILE:
            raise self.error(key, section, "is not an option of tcpkit serve")
        return action.dest

    def value(self, key: str, value: Any, section: str | None) -> Any:
        action = self.actions[key]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise self.error(key, section, f"must be true or false, not {_shown(value)}")
            return value
        if isinstance(action, argparse._AppendAction):
            items = value if isinstance(value, list) else [value]
            return [self._one(key, action, item, section) for item in items]
        return self._one(key, action, value, section)

    def _one(self, key: str, action: argparse.Action, value: Any, section: str | None) -> Any:
        kind = getattr(action.type, "__name__", "str")
        expected: tuple[type, ...] = {"int": (int,), "float": (int, float),
                                      "workers_count": (int, str)}.get(kind, (str,))
        if isinstance(value, bool) or not isinstance(value, expected):
            names = " or ".join("a number" if t in (int, float) else "a string"
                                for t in dict.fromkeys(expected))
            raise self.error(key, section, f"must be {names}, not {_shown(value)}")
        text = str(value)
        if action.choices is not None and text not in action.choices:
            raise self.error(key, section, f"must be one of {', '.join(map(str, action.choices))}"
                                           f", not {_shown(value)}")
        if action.type is None:
            return text
        try:
            return action.type(text)  # type: ignore[operator]
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise self.error(key, section, str(exc)) from None

    def error(self, key: str, section: str | None, message: str) -> ConfigError:
        line = self._line_of(key, section)
        where = f"{self.path}:{line}" if line else self.path
        shown = f"[{section}] {key}" if section else key
        return ConfigError(f"{where}: {shown}: {message}")

    def _line_of(self, key: str, section: str | None) -> int | None:
        """The first line setting ``key`` inside ``section`` (None: the top level)."""
        current: str | None = None
        pattern = re.compile(rf'^\s*"?{re.escape(key)}"?\s*=')
        header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
        for number, line in enumerate(self.lines, 1):
            found = header.match(line)
            if found:
                current = found.group(1).replace('"', "").replace(" ", "")
                if section == "services" and current == f"services.{key}":
                    return number
                continue
            if current == section and pattern.match(line):
                return number
        return None


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return type(value).__name__ if isinstance(value, (list, dict)) else str(value)


# -- applying a file to the parsed command line ------------------------------------

def apply(args: argparse.Namespace, parser: argparse.ArgumentParser,
          command_line: list[str]) -> dict[str, dict[str, Any]]:
    """Fill ``args`` from ``args.config`` where the command line said nothing.

    Returns the per-service settings (name -> dest -> value).  The services
    served become the file's tables, unless the command line names services;
    each table's ``listen`` joins ``--listen`` as ``NAME=ENDPOINT``, unless the
    command line gives that service a ``--listen`` of its own.
    """
    from tcpkit import registry

    config = load(args.config, parser)
    for name in config.services:
        try:
            registry.get(name)
        except registry.UnknownService as exc:
            raise ConfigError(f"{config.path}: [services.{name}]: {exc}") from None
    given = given_dests(parser, command_line)
    for dest, value in config.options.items():
        if dest not in given:
            setattr(args, dest, value)
    if args.inetd:
        _check_inetd(config)
    if config.services and "services" not in given:
        args.services = list(config.services)
    if any("=" not in item for item in args.listen):
        return config.services  # one service, its endpoints from the command line
    listened = {item.partition("=")[0] for item in args.listen}
    several = len(args.services) > 1
    for name, settings in config.services.items():
        if name in args.services and name not in listened:
            args.listen += [f"{name}={endpoint}" if several else endpoint
                            for endpoint in settings.get("listen", [])]
    return config.services


def _check_inetd(config: ConfigFile) -> None:
    for name, settings in config.services.items():
        for key in NOT_WITH_INETD:
            if key.replace("-", "_") in settings:
                raise config.error(key, f"services.{name}", "--inetd serves the one "
                                                            "connection on stdin: it does not "
                                                            "apply")


class Settled:
    """Gives each listener its service's own limits and certificate (its table's).

    Built before serving, so a bad per-service certificate is a usage error
    (and ``--check-config`` finds it); a service without a table keeps the
    server's limits.
    """

    def __init__(self, args: argparse.Namespace, per_service: dict[str, dict[str, Any]]) -> None:
        from tcpkit import serve_options
        from tcpkit.operate import load_tls

        self.limits: dict[str, Limits] = {}
        self.tls: dict[str, ServerTLS | None] = {}
        for name, settings in per_service.items():
            own = argparse.Namespace(**{**vars(args), **settings})
            self.limits[name] = serve_options.limits(own)
            if "tls_cert" in settings:
                self.tls[name] = load_tls(own)

    def __call__(self, listeners: Sequence[Listener]) -> list[Listener]:
        return [dataclasses.replace(
            listener, limits=self.limits.get(listener.service.name),
            tls=self.tls.get(listener.service.name, listener.tls)) for listener in listeners]


def given_dests(parser: argparse.ArgumentParser, command_line: list[str]) -> set[str]:
    """The options the command line itself set (``command_line`` starts at ``serve``)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            probe._add_action(_copy(action))
        elif not action.option_strings:
            probe.add_argument(action.dest, nargs="*", default=argparse.SUPPRESS)
    args = command_line[1:] if command_line[:1] == ["serve"] else command_line
    found, _ = probe.parse_known_args(args)
    return {dest for dest, value in vars(found).items() if value != []} | (
        {"services"} if getattr(found, "services", []) else set())


def _copy(action: argparse.Action) -> argparse.Action:
    import copy

    clone = copy.copy(action)
    clone.default = argparse.SUPPRESS
    clone.type = None  # already checked by the real parse
    clone.choices = None
    return clone
