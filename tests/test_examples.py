"""The example services (examples/*) without a socket: each session driven sans-IO
through tcpkit.dialog.Dialog, whole, byte by byte and in every chunk size.

Over real sockets in every mode they are tested in tests/test_examples_e2e.py, and the
chat room through Redis in tests/test_examples_redis.py.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.examples import EXAMPLES, load_example
from tcpkit import Service, Session
from tcpkit.dialog import Dialog
from tcpkit.hub import LocalHub

daytime, kv, chat, mail, netstring = (load_example(name) for name in (
    "daytime", "kv", "chat", "mail", "netstring"))
ISO_SECONDS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\n")


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def talk(service: Service, data: bytes, size: int | None = None, **kwargs: object) -> bytes:
    """Connect, send ``data`` in chunks of ``size`` (whole if None), half-close; all replies."""
    with Dialog(service, **kwargs) as dialog:  # type: ignore[arg-type]
        out = [dialog.start()]
        out += [dialog.say(chunk) for chunk in chunked(data, size or max(1, len(data)))]
        out.append(dialog.eof())
        return b"".join(out)


def fresh_kv() -> Service:
    """The kv service with a store of its own (the real one is shared by the process)."""

    class FreshKV(kv.KV):  # type: ignore[misc,name-defined]
        store: ClassVar[dict[bytes, bytes]] = {}

    return Service("kv", 0, "test", session=FreshKV, shared_state=True)


@pytest.mark.parametrize("module", [daytime, kv, chat, mail, netstring])
def test_each_example_is_a_service_with_its_port(module: ModuleType) -> None:
    ports = {"daytime": 7813, "kv": 7814, "chat": 7815, "mail": 7825, "netstring": 7816}
    service = module.SERVICE
    assert isinstance(service, Service) and service.port == ports[service.name]
    assert service.uses_sessions
    assert service.shared_state == {"kv": True, "chat": "hub"}.get(service.name, False)


# -- daytime ---------------------------------------------------------------------


def test_daytime_says_the_time_and_closes() -> None:
    with Dialog(daytime.SERVICE) as dialog:
        assert ISO_SECONDS.fullmatch(dialog.start())
        assert dialog.closed
        assert dialog.say(b"ignored\n") == b""


# -- kv --------------------------------------------------------------------------

KV_DIALOG = (b"SET colour dark blue\nGET colour\nGET nothing\nDEL colour\nDEL colour\n"
             b"GET colour\nSET k\nSET k v\r\nGET k\r\nPUT a b\nQUIT\nGET k\n")
KV_REPLIES = (b"OK\ndark blue\nerror: no such key: nothing\nOK\nerror: no such key: colour\n"
              b"error: no such key: colour\nerror: unknown command\nOK\r\nv\r\n"
              b"error: unknown command\nbye\n")


@pytest.mark.parametrize("size", [None, 1, 2, 3, 5, 7, 11])
def test_kv_dialog_in_every_chunk_size(size: int | None) -> None:
    assert talk(fresh_kv(), KV_DIALOG, size) == KV_REPLIES


def test_kv_state_is_shared_by_every_connection() -> None:
    service = fresh_kv()
    with Dialog(service) as one, Dialog(service) as two:
        assert one.start() == two.start() == b""
        assert one.say(b"SET shared yes\n") == b"OK\n"
        assert two.say(b"GET shared\n") == b"yes\n"
        assert two.say(b"QUIT\n") == b"bye\n" and two.closed
        assert not one.closed


# -- mail ------------------------------------------------------------------------

MAIL_DIALOG = (b"HELO me\r\nMAIL FROM:<a@example>\r\nRCPT TO:<b@example>\r\nDATA\r\n"
               b"Hi Bob,\r\n..a line starting with a dot\r\n\r\nQUIT is not a verb here\r\n"
               b".\r\nNOOP\r\nquit\r\nHELO again\r\n")
MAIL_REPLIES = (b"220 tcpkit ready\r\n250 hello me\r\n250 ok\r\n250 ok\r\n354 end with .\r\n"
                b"250 queued 4 lines\r\n500 unknown command\r\n221 bye\r\n")


@pytest.mark.parametrize("size", [None, 1, 2, 3, 4, 6, 9, 13])
def test_mail_dialog_in_every_chunk_size(size: int | None) -> None:
    assert talk(mail.SERVICE, MAIL_DIALOG, size) == MAIL_REPLIES


def test_mail_answers_crlf_even_to_bare_lf() -> None:
    replies = talk(mail.SERVICE, b"HELO x\nQUIT\n")
    assert replies == b"220 tcpkit ready\r\n250 hello x\r\n221 bye\r\n"


def test_mail_a_line_too_long_is_500_and_closes() -> None:
    with Dialog(mail.SERVICE, max_line=32) as dialog:
        assert dialog.start() == b"220 tcpkit ready\r\n"
        assert dialog.say(b"HELO me\r\n" + b"x" * 40) == b"250 hello me\r\n500 line too long\r\n"
        assert dialog.closed
        assert dialog.say(b"QUIT\r\n") == b""  # input after the error is discarded


def test_mail_forgets_the_body_it_counts() -> None:
    """A huge DATA body costs no memory: lines are counted, not kept."""
    with Dialog(mail.SERVICE) as dialog:
        dialog.start()
        assert dialog.say(b"DATA\r\n") == b"354 end with .\r\n"
        for _ in range(100):
            assert dialog.say(b"y" * 1000 + b"\r\n") == b""
        assert dialog.say(b".\r\n") == b"250 queued 100 lines\r\n"
        kept = vars(dialog.conn.session).values()
        assert not any(isinstance(value, bytes | list) for value in kept)


# -- netstring ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 1, 2, 3, 4, 5])
def test_netstring_reverses_each_payload(size: int | None) -> None:
    sent = b"5:hello,0:,3:a b,14:\x00\xff\r\n,:;reverse,"
    assert talk(netstring.SERVICE, sent, size) == b"5:olleh,0:,3:b a,14:esrever;:,\n\r\xff\x00,"


@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(1, 16))
def test_netstring_any_payloads_any_chunks(payloads: list[bytes], size: int) -> None:
    sent = b"".join(b"%d:%s," % (len(p), p) for p in payloads)
    expected = b"".join(b"%d:%s," % (len(p), p[::-1]) for p in payloads)
    assert talk(netstring.SERVICE, sent, size) == expected


@pytest.mark.parametrize("bad", [b"5:hello;", b"x:", b"05:hello,", b":,", b"-1:"])
def test_a_malformed_netstring_closes(bad: bytes) -> None:
    with Dialog(netstring.SERVICE) as dialog:
        assert dialog.start() == b""
        assert dialog.say(b"2:ok," + bad) == b"2:ko,26:error: malformed netstring,"
        assert dialog.closed
        assert dialog.say(b"2:ok,") == b""


def test_a_netstring_over_the_limit_is_refused_at_its_header() -> None:
    with Dialog(netstring.SERVICE, max_line=100) as dialog:
        dialog.start()
        out = dialog.say(b"101:")
        assert out == b"39:error: message too long (max 100 bytes),"
        assert dialog.closed and dialog.conn.buffered == 0


# -- chat --------------------------------------------------------------------------


class Room:
    """Chat members as Dialogs sharing one in-process hub."""

    def __init__(self) -> None:
        self.hub = LocalHub()
        self.members: list[Dialog] = []

    def join(self, **kwargs: object) -> tuple[Dialog, bytes]:
        member = Dialog(chat.SERVICE, hub=self.hub, **kwargs)  # type: ignore[arg-type]
        self.members.append(member)
        return member, member.start()

    def close(self) -> None:
        for member in self.members:
            member.hang_up()


@pytest.fixture
def room() -> Iterator[Room]:
    members = Room()
    yield members
    members.close()


def test_chat_welcome_join_talk_nick_quit(room: Room) -> None:
    ann, hello = room.join()
    assert hello == b"welcome guest1\n"
    bob, hello = room.join()
    assert hello == b"welcome guest2\n"
    assert ann.hear() == b"* guest2 joined\n"
    assert ann.say(b"hi\n") == b""  # not echoed
    assert bob.hear() == b"guest1: hi\n"
    assert ann.say(b"NICK ann\n") == b"you are now ann\n"
    assert bob.say(b"NICK ann\r\n") == b"error: nickname taken\r\n"
    assert bob.say(b"NICK guest1\n") == b"you are now guest1\n"  # ann gave it up
    assert ann.say(b"NICK ann\nstill me\n") == b"you are now ann\n"
    assert bob.hear() == b"ann: still me\n"
    assert bob.say(b"QUIT\nafter quit\n") == b"bye\n"
    assert bob.closed
    bob.hang_up()
    assert ann.hear() == b"* guest1 left\n"
    assert ann.hear() == b""  # "after quit" never reached anyone


def test_chat_guest_numbers_skip_a_name_taken_with_nick(room: Room) -> None:
    first, _ = room.join()
    assert first.say(b"NICK guest2\n") == b"you are now guest2\n"
    _, hello = room.join()
    assert hello == b"welcome guest3\n"


def test_chat_byte_by_byte(room: Room) -> None:
    ann, _ = room.join()
    bob, _ = room.join()
    ann.hear()
    out = b"".join(ann.say(bytes([byte])) for byte in b"NICK ann\r\nhello there\n")
    assert out == b"you are now ann\r\n"
    assert bob.hear() == b"ann: hello there\n"


def test_chat_a_member_that_never_reads_is_dropped(room: Room) -> None:
    deaf, _ = room.join(max_unsent=10_000)
    talker, _ = room.join()
    deaf.hear()
    for _ in range(200):  # the deaf member's transport never drains: hear() is not called
        talker.say(b"x" * 100 + b"\n")
        if deaf.conn.dropped:
            break
    assert deaf.conn.dropped == "send buffer full" and deaf.closed
    deaf.hang_up()  # what the server does next: disconnected() tells the others
    assert talker.hear() == b"* guest1 left\n"
    assert talker.say(b"NICK talker\n") == b"you are now talker\n"


def test_a_dialog_must_start_first() -> None:
    with Dialog(netstring.SERVICE) as dialog, pytest.raises(RuntimeError, match="start"):
        dialog.say(b"1:x,")


def test_a_session_subclass_is_what_the_service_names() -> None:
    for module in (daytime, kv, chat, mail):
        assert issubclass(module.SERVICE.session, Session)


# -- the README shows them whole ---------------------------------------------------

README = Path(__file__).parent.parent / "README.md"


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


@pytest.mark.parametrize("name", ["chat", "mail"])
def test_readme_shows_the_example_whole(name: str) -> None:
    assert (EXAMPLES / name / f"{name}.py").read_text() in readme_blocks()


def test_readme_session_tests_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's tests without a socket, run as written."""
    [code] = [block for block in readme_blocks() if "from tcpkit.dialog import" in block]
    monkeypatch.setitem(sys.modules, "chat", chat)
    monkeypatch.setitem(sys.modules, "mail", mail)
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    tests = [value for key, value in namespace.items() if key.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        assert callable(test)
        test()
