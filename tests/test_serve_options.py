"""``tcpkit serve``'s options table: what it builds, what ``--help`` says, whose usage."""

from __future__ import annotations

import argparse
import os
import re
import subprocess

import pytest

from helpers.servers import run, script
from tcpkit import cli, serve_options
from tcpkit.service import Options
from tcpkit.serving.config import Limits
from tcpkit.serving.guards.tls import HANDSHAKE_TIMEOUT


def parse_serve(*args: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["serve", *args])


def serve_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["serve"]


# -- what the parsed options build (no process, no socket) -------------------------

def test_defaults_build_the_default_limits_and_options() -> None:
    args = parse_serve()
    assert serve_options.limits(args) == Limits()
    assert serve_options.service_options(args) == Options()


def test_every_limit_option_reaches_limits() -> None:
    args = parse_serve("--max-connections", "7", "--idle-timeout", "1.5", "--max-line", "64",
                       "--drain-timeout", "2", "--time-limit", "3", "--factor-workers", "4",
                       "--max-per-ip", "5", "--rate-per-ip", "120/m",
                       "--executor", "dask://127.0.0.1:8786", "--max-digits", "9")
    assert serve_options.limits(args) == Limits(
        max_connections=7, idle_timeout=1.5, max_line=64, drain_timeout=2.0, time_limit=3.0,
        pool_size=4, max_per_ip=5, rate_per_ip=2.0, executor="dask://127.0.0.1:8786")
    assert serve_options.service_options(args) == Options(max_digits=9)


def test_workers_auto_is_a_number_before_anyone_sees_it() -> None:
    assert parse_serve("--workers", "auto").workers == len(os.sched_getaffinity(0))
    assert parse_serve("--workers", "3").workers == 3


@pytest.mark.parametrize("text, message", [
    ("0", "must be above 0: '0'"), ("-1", "must be above 0: '-1'"),
    ("many", "not a number: 'many'"),
])
def test_positive_rejects_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        serve_options.positive(int)(text)


# -- what --help says ---------------------------------------------------------------

def help_text(*command: str) -> str:
    env = {**os.environ, "COLUMNS": "100"}
    done = subprocess.run([*script("tcpkit"), *command, "--help"], capture_output=True,
                          env=env, timeout=30, check=False)
    assert done.returncode == 0 and done.stderr == b"", done.stderr
    return done.stdout.decode()


def option_entries(text: str) -> dict[str, str]:
    """``--flag`` -> its help entry (invocation and help), joined onto one line."""
    entries: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif flag is not None and line.startswith("   "):
            entries[flag] += " " + line
        else:
            flag = None
    return {flag: " ".join(entry.split()) for flag, entry in entries.items()}


@pytest.fixture(scope="module")
def serve_help() -> dict[str, str]:
    return option_entries(help_text("serve"))


def test_every_default_is_shown_in_the_one_form(serve_help: dict[str, str]) -> None:
    for action in serve_parser()._actions:
        if action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            continue
        entry = serve_help[action.option_strings[0]]
        assert serve_options.shown_default(action.default) in entry, entry


def test_time_limit_and_max_digits_show_their_defaults(serve_help: dict[str, str]) -> None:
    assert "(default: 30)" in serve_help["--time-limit"]
    assert f"(default: {Limits().time_limit:g})" in serve_help["--time-limit"]
    assert f"(default: {Options().max_digits})" in serve_help["--max-digits"]
    assert f"(default: {HANDSHAKE_TIMEOUT:g})" in serve_help["--tls-handshake-timeout"]


def test_numbers_take_metavar_n_not_their_dest(serve_help: dict[str, str]) -> None:
    assert serve_help["--max-digits"].startswith("--max-digits N ")
    for flag, entry in serve_help.items():
        made_up = flag.lstrip("-").upper().replace("-", "_")
        assert not entry.startswith(f"{flag} {made_up}"), entry


def test_log_options_have_help(serve_help: dict[str, str]) -> None:
    for flag in ("--log-format", "--log-level"):
        described = serve_help[flag].split("}", 1)[1]  # after "--log-format {text,json}"
        assert len(described.split()) >= 4, serve_help[flag]


@pytest.mark.parametrize("command", ["serve", "reverse", "factor"])
def test_defaults_are_written_default_colon(command: str) -> None:
    text = " ".join(help_text(command).split())
    assert "(default:" in text
    assert re.findall(r"\(default(?!: )", text) == []


# -- whose usage an unknown option prints ------------------------------------------

@pytest.mark.parametrize("command", ["serve", "reverse", "factor", "services"])
def test_unknown_option_prints_the_commands_usage(command: str) -> None:
    done = run([*script("tcpkit"), command, "--bogus"], timeout=30)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2 and done.stdout == b""
    assert lines[0].startswith(f"usage: tcpkit {command} "), lines
    assert lines[-1] == f"tcpkit {command}: error: unrecognized arguments: --bogus"
    assert [line for line in lines if "error:" in line] == [lines[-1]]


def test_unknown_option_before_the_command_is_the_top_levels() -> None:
    done = run([*script("tcpkit"), "--bogus", "serve"], timeout=30)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2
    assert lines[0].startswith("usage: tcpkit [-h]") and lines[-1].startswith("tcpkit: error:")
