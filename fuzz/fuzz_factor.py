"""Fuzz the factor service's request parsing and replies."""

from __future__ import annotations

from common import fuzz_main, instrumented

with instrumented():
    from tcpkit.service import Offload, Options, RequestError
    from tcpkit.services.factor import SERVICE

try:  # PARI runs under cysignals, which turns libFuzzer's SIGALRM timer into this
    from cysignals.signals import AlarmInterrupt
except ImportError:
    AlarmInterrupt = KeyboardInterrupt

# Small numbers only: the fuzzer looks for parsing bugs, not for hard semiprimes.
ANSWER = SERVICE.configured(Options(max_digits=24)).answer


def check(data: bytes) -> None:
    try:
        check_reply(data.replace(b"\n", b""))
    except AlarmInterrupt:  # the fuzzer's own timer, not a finding (no server gets it)
        return


def check_reply(line: bytes) -> None:
    try:
        reply = ANSWER(line)
    except RequestError as exc:
        message = str(exc)
        assert message and "\n" not in message, "bad error message"
        return
    if isinstance(reply, Offload):
        reply = reply.func(*reply.args)
    n = int(line)  # accepted: it must be a decimal integer
    product = 1
    for factor in reply.split():
        product *= int(factor)
    assert product == n, f"{reply!r} does not multiply back to {n}"


if __name__ == "__main__":
    fuzz_main(check)
