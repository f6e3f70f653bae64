"""Properties of the sans-IO core, found by hypothesis rather than by example.

* reversal by grapheme cluster: twice is identity on text of whole clusters,
  bytes are never lost, the block fast path agrees with the line path;
* factoring: the reply multiplies back to the request and every factor is
  prime, checked against GNU ``factor`` as an independent oracle;
* :class:`~tcpkit.connection.ServiceConnection` as a state machine, driven with
  random sends cut anywhere, over-long lines, offloaded jobs finishing out of
  order or failing, and EOF, against a model written from SPEC §3 and §4.

Line framing's own properties live in ``test_framing.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import flint
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tcpkit.connection import Job, ServiceConnection
from tcpkit.service import Offload, Options, RequestError, Service
from tcpkit.services import factor, reverse

# -- reversal -------------------------------------------------------------------------

# Clusters that stay whole whatever stands next to them: a base letter (maybe
# with combining marks), emoji with a skin tone, ZWJ families, flag pairs.
CLUSTERS = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.sampled_from(["é", "ñ", "a\u0303", "e\u0301\u0323", "ß", "한", "語", "ю"]),
    st.sampled_from(["👍🏽", "👩‍👩‍👧", "🇫🇷", "🇯🇵", "❤️", "🧑🏿‍🚀"]),
)


@given(st.lists(CLUSTERS, max_size=30))
def test_reversal_is_an_involution_on_grapheme_clusters(clusters: list[str]) -> None:
    line = "".join(clusters).encode()
    once = reverse.reverse_line(line)
    assert once == "".join(reversed(clusters)).encode()
    assert reverse.reverse_line(once) == line


@given(st.binary(max_size=200).filter(lambda b: b"\n" not in b))
def test_reversal_keeps_every_byte_of_any_line(line: bytes) -> None:
    """Invalid UTF-8 included: the reply is a permutation of the request's bytes."""
    reply = reverse.reverse_line(line)
    assert Counter(reply) == Counter(line)
    if line.isascii():
        assert reply == line[::-1]


@given(st.lists(st.binary(max_size=20).filter(lambda b: b"\n" not in b), max_size=20))
def test_block_fast_path_agrees_with_the_line_path(lines: list[bytes]) -> None:
    block = b"".join(line + b"\n" for line in lines)
    fast = reverse.reverse_block(block)
    if fast is not None:
        assert fast == b"".join(reverse.reverse_line(line) + b"\n" for line in lines)


# -- factoring ------------------------------------------------------------------------

ANSWER = factor.SERVICE.configured(Options()).answer


def reply_for(n: int) -> bytes:
    answer = ANSWER(b"%d" % n)
    if isinstance(answer, Offload):
        return answer.func(*answer.args)
    return answer


@given(st.integers(min_value=-(10**40), max_value=10**40).filter(bool))
def test_factors_multiply_back_and_are_prime(n: int) -> None:
    factors = [int(f) for f in reply_for(n).split()]
    product = 1
    for f in factors:
        product *= f
    assert product == n
    primes = factors[1:] if n < 0 else factors
    assert n > 0 or factors[0] == -1
    assert primes == sorted(primes)
    assert all(flint.fmpz(p).is_prime() for p in primes)


@pytest.mark.skipif(shutil.which("factor") is None, reason="GNU factor not installed")
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2**100), min_size=1, max_size=40))
def test_factors_agree_with_gnu_factor(numbers: list[int]) -> None:
    gnu = subprocess.run(["factor", *map(str, numbers)], capture_output=True, check=True,
                         timeout=60).stdout.splitlines()
    for n, line in zip(numbers, gnu, strict=True):
        assert reply_for(n) == line.partition(b":")[2].strip()


@given(st.from_regex(rb"\A[ \t]*[+-]?[0-9]{1,30}[ \t]*\Z"))
def test_any_well_formed_request_is_answered_or_refused_by_name(line: bytes) -> None:
    try:
        reply = ANSWER(line)
    except RequestError as exc:
        assert str(exc) == "0 has no prime factorization"
        assert int(line) == 0
    else:
        assert isinstance(reply, bytes | Offload)


# -- the connection state machine -----------------------------------------------------

MAX_LINE = 8


def slow_reverse(line: bytes) -> bytes:
    return line[::-1]


def answer(line: bytes) -> bytes | Offload:
    """A service with every kind of answer: inline, offloaded, refused."""
    if line.startswith(b"job"):
        return Offload(slow_reverse, (line,))
    if line == b"bad":
        raise RequestError("bad request")
    return line[::-1]


def answer_block(block: bytes) -> bytes | None:
    """A fast path like reverse's: whole blocks of plain lines, else None."""
    lines = block.split(b"\n")[:-1]
    if any(line.startswith((b"job", b"bad")) or b"\r" in line for line in lines):
        return None
    return b"".join(line[::-1] + b"\n" for line in lines)


SERVICE = Service("model", 0, "test", answer)
PIECES = st.sampled_from([b"a", b"bc", b"job", b"bad", b"\n", b"\r\n", b"\r", b"xxxx",
                          b"x" * MAX_LINE, b"", b"job\n", b"ab\n", b"bad\r\n"])


class ConnectionModel(RuleBasedStateMachine):
    """Drive a ServiceConnection and a model of SPEC §3/§4 side by side.

    The model frames the whole input itself and lists the reply every line
    should get; the connection must have released exactly the replies before
    the first unfinished job, in order, after every step.
    """

    service = SERVICE

    def __init__(self) -> None:
        super().__init__()
        self.conn = ServiceConnection(self.service, MAX_LINE)
        self.output = b""
        self.jobs: list[Job] = []
        self.received = b""  # every byte sent
        self.eof = False
        self.outcomes: dict[int, bytes] = {}  # model line index -> finished job reply

    # -- the model ------------------------------------------------------------

    def expected(self) -> tuple[bytes, bool]:
        """(replies the connection should have released, whether it is finished)."""
        out: list[bytes] = []
        *lines, tail = self.received.split(b"\n")
        requests = [(line[:-1], b"\r\n") if line.endswith(b"\r") else (line, b"\n")
                    for line in lines]
        closing = False
        for index, (content, terminator) in enumerate(requests):
            if len(content) > MAX_LINE:
                out.append(b"error: line too long (max %d bytes)\n" % MAX_LINE)
                closing = True
                break
            reply = self.reply(index, content)
            if reply is None:
                return b"".join(out), False
            out.append(reply + terminator)
        else:
            if len(tail) > MAX_LINE + 1 or (self.eof and len(tail) > MAX_LINE):
                out.append(b"error: line too long (max %d bytes)\n" % MAX_LINE)
                closing = True
            elif self.eof and tail:
                reply = self.reply(len(requests), tail)
                if reply is None:
                    return b"".join(out), False
                out.append(reply + b"\n")
        return b"".join(out), closing or self.eof

    def reply(self, index: int, content: bytes) -> bytes | None:
        if content.startswith(b"job"):
            return self.outcomes.get(index)
        if content == b"bad":
            return b"error: bad request"
        return content[::-1]

    # -- rules ------------------------------------------------------------------

    @rule(pieces=st.lists(PIECES, min_size=1, max_size=6))
    def send(self, pieces: list[bytes]) -> None:
        data = b"".join(pieces)
        if not self.eof and not self.conn.closing:
            self.received += data
        self.output += self.conn.receive_data(data)
        self.take_jobs()

    @precondition(lambda self: bool(self.jobs))
    @rule(which=st.integers(min_value=0), fail=st.booleans())
    def finish_a_job(self, which: int, fail: bool) -> None:
        job, index = self.jobs.pop(which % len(self.jobs))
        if fail:
            self.outcomes[index] = b"error: time limit exceeded (1 s)"
            self.output += self.conn.job_failed(job, "time limit exceeded (1 s)")
        else:
            self.outcomes[index] = job.work.func(*job.work.args)
            self.output += self.conn.job_done(job, job.work.func(*job.work.args))

    @rule()
    def client_eof(self) -> None:
        if not self.conn.closing:
            self.eof = True
        self.output += self.conn.receive_eof()
        self.take_jobs()

    def take_jobs(self) -> None:
        new = self.conn.take_jobs()
        if not new:
            return
        # Which request lines became jobs: the job lines not yet seen, in order.
        *lines, tail = self.received.split(b"\n")
        if self.eof and tail:
            lines.append(tail)
        job_lines = [i for i, line in enumerate(lines) if line.startswith(b"job")]
        seen = {index for _, index in self.jobs} | set(self.outcomes)
        fresh = [i for i in job_lines if i not in seen]
        assert len(fresh) >= len(new)
        self.jobs += list(zip(new, fresh, strict=False))

    # -- checks -------------------------------------------------------------------

    @invariant()
    def released_exactly_what_the_model_says(self) -> None:
        expected, finished = self.expected()
        assert self.output == expected
        assert self.conn.finished == finished


class BlockConnectionModel(ConnectionModel):
    """The same, with a block fast path: it must never jump ahead of a pending job."""

    service = Service("model-block", 0, "test", answer, answer_block=answer_block)


@pytest.mark.parametrize("machine", [ConnectionModel, BlockConnectionModel],
                         ids=["line-path", "block-fast-path"])
def test_connection_matches_its_model(machine: type[ConnectionModel]) -> None:
    run_state_machine_as_test(machine, settings=settings(
        max_examples=300, stateful_step_count=30, deadline=None))


@pytest.mark.parametrize("machine", [ConnectionModel, BlockConnectionModel],
                         ids=["line-path", "block-fast-path"])
def test_a_reply_never_overtakes_a_pending_job(machine: type[ConnectionModel]) -> None:
    """The sequence the model explores at random, pinned: a job, then plain lines."""
    state = machine()
    state.send([b"job\n"])
    state.send([b"ab\n", b"cd\n"])  # plain lines: the block fast path would take them
    state.released_exactly_what_the_model_says()
    assert state.output == b""
    state.finish_a_job(0, fail=False)
    state.released_exactly_what_the_model_says()
    assert state.output == b"boj\nba\ndc\n"
