"""daytime (RFC 867 in spirit): one line, the server's time, then the server closes.

    $ nc 127.0.0.1 7813
    2026-12-01T23:59:59+00:00
"""

from datetime import datetime

from tcpkit import Service, Session


class Daytime(Session):
    def connected(self) -> str:
        self.close()  # after this reply: the client reads until the server closes
        # ISO 8601 with the server's UTC offset, to the second.
        return datetime.now().astimezone().isoformat(timespec="seconds")

    def received(self, message: bytes) -> None:
        return None  # never called: input after connect is ignored


SERVICE = Service("daytime", 7813, "the server's time, then close", session=Daytime)
