"""The factor service (port 7801): each integer comes back as its prime factors.

``42`` → ``2 3 7``, ``1`` → an empty line, ``-42`` → ``-1 2 3 7``.  The work is
done by :mod:`tcpkit.factoring` (FLINT, plus PARI for hard cofactors).

Numbers below 2**64 are factored inline — FLINT takes about 12 us for them,
less than a round trip to a worker process would — and a block of such lines
is answered in one call (:func:`answer_block`), the path that carries a
pipelined stream of 64-bit numbers.  Larger numbers become an
:class:`~tcpkit.service.Offload`, so the server runs them in a worker process
under the time limit, fairly across clients, while other clients are served.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

import flint

from tcpkit import quoting
from tcpkit.factoring.bands import INLINE_BELOW
from tcpkit.factoring.engine import factor_pairs, factorize
from tcpkit.service import Offload, Options, RequestError, Service

__all__ = ["SERVICE", "answer_block", "factor_digits", "factorize", "make_answer",
           "parse_request"]

_INTEGER = re.compile(rb"[ \t]*([+-]?)([0-9]+)[ \t]*")
_SHOWN = 40  # how much of a bad request an error message quotes
_INLINE_DIGITS = len(str(INLINE_BELOW))


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
    return quoting.quote(line, _SHOWN)


def factor_digits(negative: bool, digits: bytes) -> bytes:
    """The reply for a parsed request: factors separated by single spaces."""
    parts = ["-1"] if negative else []
    for prime, exponent in factor_pairs(int(digits)):
        parts.extend([str(prime)] * exponent)
    return " ".join(parts).encode("ascii")


def _small_reply(n: int) -> str:
    """Factors of ``1 <= n < 2**64`` as reply text (the inline hot path)."""
    pairs = flint.fmpz(n).factor()
    if len(pairs) == 1:  # a prime or a prime power: the most common shapes
        prime, exponent = pairs[0]
        return str(prime) if exponent == 1 else " ".join([str(prime)] * exponent)
    pairs.sort()  # FLINT's order is not always ascending (2**38 - 1)
    parts = []
    for prime, exponent in pairs:
        text = str(prime)
        if exponent == 1:
            parts.append(text)
        else:
            parts.extend([text] * exponent)
    return " ".join(parts)


def answer_block(block: bytes) -> bytes | None:
    """Replies for a block of LF-terminated lines that are all plain numbers below 2**64.

    Anything else in the block (a sign, spaces, CR, a big number, junk, zero)
    returns ``None``: the connection then answers line by line, the general path.
    """
    replies = []
    for line in block.split(b"\n")[:-1]:
        if not line.isdigit() or len(line) > _INLINE_DIGITS:
            return None
        n = int(line)
        if n >= INLINE_BELOW or n == 0:
            return None
        replies.append(_small_reply(n))
    replies.append("")
    return "\n".join(replies).encode("ascii")


def make_answer(max_digits: int) -> Callable[[bytes], bytes | Offload]:
    """The line handler for a given digit limit."""

    def answer(line: bytes) -> bytes | Offload:
        negative, digits = parse_request(line, max_digits)
        if len(digits) <= _INLINE_DIGITS:
            n = int(digits)
            if n < INLINE_BELOW:
                reply = _small_reply(n)
                return ("-1 " + reply if reply else "-1").encode() if negative else reply.encode()
        return Offload(factor_digits, (negative, digits))

    return answer


def _configure(service: Service, options: Options) -> Service:
    configured = service.with_answer(make_answer(options.max_digits))
    if options.max_digits < _INLINE_DIGITS:  # the block path would skip the digit check
        configured = replace(configured, answer_block=None)
    return configured


SERVICE = Service(
    name="factor",
    port=7801,
    description="replies with the prime factors of each integer",
    answer=make_answer(Options().max_digits),
    answer_block=answer_block,
    configure=_configure,
    # The workers' forkserver imports the engine (what factor_digits needs to
    # unpickle) and starts PARI: every worker forked from it has both ready.
    preload=("tcpkit.services.factor", "tcpkit.factoring.preload"),
)
