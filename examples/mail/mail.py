"""mail: an SMTP-like dialog (it accepts mail and queues nowhere: a sketch to copy).

    S: 220 tcpkit ready
    C: HELO me                  S: 250 hello me
    C: MAIL FROM:<a@example>    S: 250 ok
    C: RCPT TO:<b@example>      S: 250 ok
    C: DATA                     S: 354 end with .
    C: Hi Bob,
    C: ..and a line starting with a dot
    C: .                        S: 250 queued 2 lines
    C: QUIT                     S: 221 bye   (and the server closes)

Unknown verbs get ``500 unknown command``; a line longer than ``--max-line``
gets ``500 line too long`` and the connection closes; a client the server turns
away (``--max-connections``, ``--deny``...) gets ``421 server busy``,
``421 access denied``...  Every reply ends CR LF.
"""

from tcpkit import RequestError, Service, Session
from tcpkit.framers import Lines


class Mail(Session):
    def connected(self) -> str:
        self.in_data = False  # reading a message body, until a lone "."
        self.body_lines = 0  # counted, not kept: a connection's memory stays bounded
        return "220 tcpkit ready"

    def received(self, message: bytes) -> str | None:
        if self.in_data:
            return self.body_line(message)
        verb, _, argument = message.partition(b" ")
        verb = verb.upper()  # SMTP verbs are case-insensitive
        if verb == b"HELO" and argument:
            return f"250 hello {argument.decode('utf-8', 'replace')}"
        if verb == b"MAIL" and argument.upper().startswith(b"FROM:"):
            return "250 ok"
        if verb == b"RCPT" and argument.upper().startswith(b"TO:"):
            return "250 ok"
        if verb == b"DATA" and not argument:
            self.in_data, self.body_lines = True, 0
            return "354 end with ."
        if verb == b"QUIT":
            self.close()
            return "221 bye"
        raise RequestError("unknown command")  # -> "500 unknown command" (see errors=)

    def body_line(self, line: bytes) -> str | None:
        if line == b".":
            self.in_data = False
            return f"250 queued {self.body_lines} lines"
        # A body line starting with "." was sent as ".." (dot-stuffing): a real
        # server would store line[1:] here.
        self.body_lines += 1
        return None  # no reply to a body line


def smtp_errors(kind: str, message: str) -> bytes:
    """tcpkit's own errors in SMTP's syntax: 421 for a client turned away before
    it is served (server busy, access denied, per-IP limits), else 500 and a reason."""
    if kind == "refused":
        return b"421 " + message.encode()
    return b"500 " + (b"line too long" if kind == "line too long" else message.encode())


SERVICE = Service("mail", 7825, "an SMTP-like mail dialog", session=Mail,
                  framer=Lines(newline=b"\r\n", echo_terminator=False), errors=smtp_errors)
