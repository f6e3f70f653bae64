"""The reverse and factor services without sockets (SPEC §3, §4)."""

from __future__ import annotations

import math
from collections import Counter

import flint
import pytest
import regex
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tcpkit import RequestError, factorize
from tcpkit.connection import ServiceConnection
from tcpkit.service import Offload, Options
from tcpkit.services import factor, reverse
from tcpkit.services.factor import factor_digits
from tcpkit.services.reverse import reverse_block, reverse_line

CLUSTER = regex.compile(r"\X")


def clusters(text: str) -> list[str]:
    return list(CLUSTER.findall(text))


def reply_of(service: object, stream: bytes) -> bytes:
    """Every reply the service gives to ``stream`` (then EOF) over one connection."""
    conn = ServiceConnection(service)  # type: ignore[arg-type]
    out = conn.receive_data(stream) + conn.receive_eof()
    assert not conn.take_jobs()
    return out


# -- reverse ----------------------------------------------------------------


@pytest.mark.parametrize(("line", "reply"), [
    ("hello", "olleh"),
    ("", ""),
    ("a", "a"),
    ("an\u0303b", "bn\u0303a"),                          # combining tilde stays on its n
    ("a\U0001F44D\U0001F3FDb", "b\U0001F44D\U0001F3FDa"),  # thumbs up, skin tone
    ("x\U0001F1EB\U0001F1F7\U0001F1E9\U0001F1EAy",         # two flags
     "y\U0001F1E9\U0001F1EA\U0001F1EB\U0001F1F7x"),
    ("1\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F468\u200d\U0001F469\u200d\U0001F4671"),
    ("\ud55c\uad6d\uc5b4", "\uc5b4\uad6d\ud55c"),
])
def test_reverse_by_grapheme_cluster(line: str, reply: str) -> None:
    assert reverse_line(line.encode()) == reply.encode()


def test_combining_tilde_example_of_the_spec() -> None:
    line = "an\u0303b".encode()
    assert reverse_line(line).decode() == "bn\u0303a"  # rendered "bña"
    assert len(clusters(reverse_line(line).decode())) == 3


def test_invalid_utf8_is_kept_byte_for_byte_and_moved_as_units() -> None:
    assert reverse_line(b"a\xffb") == b"b\xffa"
    assert reverse_line(b"\xc3(x") == b"x(\xc3"          # truncated sequence
    assert reverse_line(b"\xe2\x82ok") == b"ko\x82\xe2"  # each stray byte is one unit
    assert reverse_line(b"\xed\xa0\x80z") == b"z\x80\xa0\xed"  # encoded surrogate
    assert reverse_line("é".encode() + b"\x80") == b"\x80" + "é".encode()


def test_reverse_over_a_connection_keeps_terminators() -> None:
    svc = reverse.SERVICE
    assert reply_of(svc, b"abc\n") == b"cba\n"
    assert reply_of(svc, b"abc\r\n") == b"cba\r\n"
    assert reply_of(svc, b"abc\r\ndef\n") == b"cba\r\nfed\n"
    assert reply_of(svc, b"\n\r\n") == b"\n\r\n"           # empty lines stay empty
    assert reply_of(svc, b"abc\ndef") == b"cba\nfed\n"     # final line gets an LF
    assert reply_of(svc, b"a\rb\n") == b"b\ra\n"           # a lone CR is content
    assert reply_of(svc, b"x\r\r\n") == b"\rx\r\n"         # only the last CR is terminator
    assert reply_of(svc, "an\u0303b\r\n".encode()) == "bn\u0303a\r\n".encode()


def test_reverse_block_equals_line_by_line_for_ascii() -> None:
    block = b"hello\nworld\n\nab c\n"
    assert reverse_block(block) == b"olleh\ndlrow\n\nc ba\n"
    assert reverse_block(b"a\r\n") is None  # CRLF goes the slow path
    assert reverse_block("é\n".encode()) is None


PRINTABLE_ASCII = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
CLUSTER_POOL = ["a", "Z", " ", "n\u0303", "e\u0301\u0323", "\U0001F44D\U0001F3FD",
                "\U0001F1EB\U0001F1F7", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
                "\ud55c", "\u0915\u094d\u0937", "\u00e9", "\u4e2d"]


@settings(deadline=None)  # no timed tests: a busy machine is not a failure
@given(st.lists(PRINTABLE_ASCII, max_size=20))
def test_block_fast_path_equals_slow_path(lines: list[str]) -> None:
    block = b"".join(line.encode() + b"\n" for line in lines)
    slow = b"".join(reverse_line(line.encode()) + b"\n" for line in lines)
    assert reverse_block(block) == slow
    no_fast_path = reverse.SERVICE.__class__(
        "r", 1, "", reverse.SERVICE.answer, answer_block=None)
    assert reply_of(reverse.SERVICE, block) == reply_of(no_fast_path, block) == slow


@settings(deadline=None)
@given(st.lists(st.sampled_from(CLUSTER_POOL), max_size=25))
def test_reversal_is_an_involution_on_grapheme_clusters(parts: list[str]) -> None:
    text = "".join(parts)
    once = reverse_line(text.encode()).decode()
    assert clusters(once) == clusters(text)[::-1]
    assert reverse_line(once.encode()).decode() == text


@settings(deadline=None)
@given(st.text(max_size=40))
def test_reversal_reverses_the_cluster_sequence_of_any_text(text: str) -> None:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates are not text on the wire
        assume(False)
        return
    once = reverse_line(data).decode()
    # Re-segmenting may merge neighbours (a leading combining mark lands on a
    # base), but the clusters as cut from the request come back reversed.
    assert once == "".join(clusters(text)[::-1])


@settings(deadline=None)
@given(st.binary(max_size=60))
def test_any_bytes_come_back_permuted_never_lost(data: bytes) -> None:
    line = data.replace(b"\n", b"")
    out = reverse_line(line)
    assert Counter(out) == Counter(line)
    if line.isascii():
        assert out == line[::-1]


# -- factor -----------------------------------------------------------------

ANSWER = factor.make_answer(Options().max_digits)


def factor_reply(line: bytes) -> bytes:
    reply = ANSWER(line)
    if isinstance(reply, Offload):
        reply = reply.func(*reply.args)
    return reply


@pytest.mark.parametrize(("line", "reply"), [
    (b"42", b"2 3 7"),
    (b"1024", b" ".join([b"2"] * 10)),
    (b"7919", b"7919"),
    (b"1", b""),
    (b"-1", b"-1"),
    (b"-42", b"-1 2 3 7"),
    (b"  42  ", b"2 3 7"),
    (b"\t42", b"2 3 7"),
    (b"+42", b"2 3 7"),
    (b"0042", b"2 3 7"),
    (b"-0042", b"-1 2 3 7"),
    (b"18446744073709551616", b" ".join([b"2"] * 64)),        # 2**64: offloaded
    (b"18446744073709551615", b"3 5 17 257 641 65537 6700417"),  # 2**64 - 1: inline
    (b"1000000000000000000000000000000000000000000000000000000000000",
     b" ".join([b"2"] * 60 + [b"5"] * 60)),
])
def test_factor_examples(line: bytes, reply: bytes) -> None:
    assert factor_reply(line) == reply


def test_small_numbers_inline_and_large_ones_offloaded() -> None:
    assert isinstance(ANSWER(b"18446744073709551615"), bytes)
    big = ANSWER(b"18446744073709551616")
    assert isinstance(big, Offload)
    assert big.func is factor_digits


@pytest.mark.parametrize(("line", "error"), [
    (b"abc", 'not an integer: "abc"'),
    (b"0", "0 has no prime factorization"),
    (b"-0", "0 has no prime factorization"),
    (b"000", "0 has no prime factorization"),
    (b"+", 'not an integer: "+"'),
    (b"-", 'not an integer: "-"'),
    (b"", 'not an integer: ""'),
    (b"   ", 'not an integer: "   "'),
    (b"4 2", 'not an integer: "4 2"'),
    (b"4.2", 'not an integer: "4.2"'),
    (b"0x2a", 'not an integer: "0x2a"'),
    (b"--4", 'not an integer: "--4"'),
    (b"1e5", 'not an integer: "1e5"'),
    (b"9" * 1001, "too many digits (max 1000)"),
])
def test_factor_errors_are_the_spec_texts(line: bytes, error: str) -> None:
    with pytest.raises(RequestError) as caught:
        ANSWER(line)
    assert str(caught.value) == error


def test_unicode_digits_are_not_an_integer() -> None:
    for line in ("\uff14\uff12", "\u0664\u0662", "4\u00b2", "\u2167"):  # fullwidth, Arabic, ², Ⅷ
        with pytest.raises(RequestError, match=r"^not an integer: "):
            ANSWER(line.encode())


def test_bad_bytes_are_quoted_bounded_and_on_one_line() -> None:
    with pytest.raises(RequestError) as caught:
        ANSWER(b"\xff\x00" + b"x" * 500)
    message = str(caught.value)
    assert message.startswith('not an integer: "') and message.endswith('..."')
    assert len(message) < 120 and "\n" not in message and "\x00" not in message


def test_leading_zeros_do_not_count_as_digits() -> None:
    assert factor_reply(b"0" * 2000 + b"6") == b"2 3"
    short = factor.make_answer(3)
    assert short(b"999") == b"3 3 3 37"
    with pytest.raises(RequestError, match=r"^too many digits \(max 3\)$"):
        short(b"1000")


def test_max_digits_option_configures_the_service() -> None:
    service = factor.SERVICE.configured(Options(max_digits=5))
    assert service.answer(b"12345") == b"3 5 823"
    with pytest.raises(RequestError, match=r"max 5\)"):
        service.answer(b"123456")


def test_factor_over_a_connection_keeps_terminators_and_continues() -> None:
    assert reply_of(factor.SERVICE, b"42\r\nabc\n0\n12") == (
        b'2 3 7\r\nerror: not an integer: "abc"\nerror: 0 has no prime factorization\n2 2 3\n')


def test_factorize_without_network() -> None:
    assert factorize(42) == [2, 3, 7]
    assert factorize(1) == []
    assert factorize(-12) == [-1, 2, 2, 3]
    assert factorize(2**89 - 1) == [2**89 - 1]
    with pytest.raises(ValueError):
        factorize(0)


def check_factors(n: int, factors: list[int]) -> None:
    assert math.prod(factors) == n
    positive = factors[1:] if n < 0 else factors
    assert positive == sorted(positive)
    assert all(p > 1 and flint.fmpz(p).is_prime() for p in positive)


def test_factors_come_in_ascending_order() -> None:
    """FLINT returns factors unordered for some numbers; the spec says ascending."""
    assert factorize(2786250040752085) == [5, 13298333, 41903749]
    assert factor_reply(b"-2786250040752085") == b"-1 5 13298333 41903749"
    assert factor_reply(b"2786250040752085" * 2) == b" ".join(
        b"%d" % p for p in factorize(int(b"2786250040752085" * 2)))


@settings(deadline=None)
@given(st.integers(min_value=-(10**30), max_value=10**30).filter(bool))
@example(2786250040752085)
def test_product_of_factors_is_n_and_each_is_prime(n: int) -> None:
    factors = factorize(n)
    check_factors(n, factors)
    reply = factor_reply(str(n).encode())
    assert [int(f) for f in reply.split()] == factors


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=2**64 + 2**40))
def test_service_reply_agrees_with_factorize_near_the_inline_limit(n: int) -> None:
    assert [int(f) for f in factor_reply(b"%d" % n).split()] == factorize(n)
