"""The factor service (port 7801): each integer comes back as its prime factors.

``42`` → ``2 3 7``, ``1`` → an empty line, ``-42`` → ``-1 2 3 7``.  Factoring
is done by FLINT (through ``python-flint``): trial division, Pollard rho, ECM
and the quadratic sieve in C, 100-1000x faster than pure-Python libraries.

Numbers below 2**64 are factored inline — FLINT takes tens of microseconds for
them, less than a round trip to a worker process would.  Larger ones become an
:class:`~tcpkit.service.Offload`, so the server runs them in a worker process
under the time limit and other clients are served meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import flint

from tcpkit.service import Offload, Options, RequestError, Service

_INLINE_LIMIT = 1 << 64  # below this, factoring is cheaper than a trip to a worker
_INTEGER = re.compile(rb"[ \t]*([+-]?)([0-9]+)[ \t]*")
_SHOWN = 40  # how much of a bad request an error message quotes


def factorize(n: int) -> list[int]:
    """Prime factors of ``n`` in ascending order, with multiplicity.

    ``-1`` leads for negative numbers; ``1`` has no factors; ``0`` has no
    factorization and raises :class:`ValueError`.
    """
    if n == 0:
        raise ValueError("0 has no prime factorization")
    factors = [-1] if n < 0 else []
    for prime, exponent in sorted(flint.fmpz(abs(n)).factor()):  # FLINT does not sort
        factors.extend([int(prime)] * exponent)
    return factors


def parse_request(line: bytes, max_digits: int) -> tuple[bool, bytes]:
    """Check one request line; return (negative, digits) or raise RequestError."""
    match = _INTEGER.fullmatch(line)
    if match is None:
        raise RequestError(f"not an integer: {quote(line)}")
    sign, digits = match.groups()
    digits = digits.lstrip(b"0") or b"0"
    if len(digits) > max_digits:
        raise RequestError(f"too many digits (max {max_digits})")
    if digits == b"0":
        raise RequestError("0 has no prime factorization")
    return sign == b"-", digits


def quote(line: bytes) -> str:
    """Show a bad request in an error message: bounded, printable, one line."""
    text = line[:_SHOWN].decode("utf-8", "backslashreplace")
    text = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{text}..."' if len(line) > _SHOWN else f'"{text}"'


def factor_digits(negative: bool, digits: bytes) -> bytes:
    """The reply for a parsed request: factors separated by single spaces."""
    n = flint.fmpz(digits.decode("ascii"))
    parts = [b"-1"] if negative else []
    for prime, exponent in sorted(n.factor()):  # FLINT does not sort
        parts.extend([str(prime).encode("ascii")] * exponent)
    return b" ".join(parts)


def make_answer(max_digits: int) -> Callable[[bytes], bytes | Offload]:
    """The line handler for a given digit limit."""

    def answer(line: bytes) -> bytes | Offload:
        negative, digits = parse_request(line, max_digits)
        if len(digits) < 20 or (len(digits) == 20 and int(digits) < _INLINE_LIMIT):
            return factor_digits(negative, digits)
        return Offload(factor_digits, (negative, digits))

    return answer


def _configure(service: Service, options: Options) -> Service:
    return service.with_answer(make_answer(options.max_digits))


SERVICE = Service(
    name="factor",
    port=7801,
    description="replies with the prime factors of each integer",
    answer=make_answer(Options().max_digits),
    configure=_configure,
)
