"""A chat room that breaks its promise on purpose, to prove bench/fanout.c notices.

Usage: chat_faulty.py PORT drop|duplicate|echo|corrupt — every 50th delivery is
dropped, sent twice, goes back to its sender too, or loses its last byte.  Otherwise the protocol of
bench/anchors/chat_asyncio.py.
"""

import asyncio
import itertools
import sys

FAULT = sys.argv[2]
members: dict[bytes, "Member"] = {}
guests, deliveries = itertools.count(1), itertools.count(1)


class Member(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buf = transport, b""
        self.name = b"guest%d" % next(guests)
        transport.write(b"welcome " + self.name + b"\n")
        self.broadcast(b"* " + self.name + b" joined\n", faults=False)
        members[self.name] = self

    def data_received(self, data: bytes) -> None:
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            if line == b"QUIT":
                self.transport.write(b"bye\n")
                self.transport.close()
                break
            self.broadcast(self.name + b": " + line + b"\n", faults=True)

    def broadcast(self, data: bytes, faults: bool) -> None:
        for member in list(members.values()):
            nth = next(deliveries) % 50 == 0 if faults else False
            if member is self:
                if nth and FAULT == "echo":
                    member.transport.write(data)
            elif nth and FAULT == "corrupt":
                member.transport.write(data[:-2] + b"\n")
            elif not (nth and FAULT == "drop"):
                member.transport.write(data * (2 if nth and FAULT == "duplicate" else 1))

    def connection_lost(self, exc: Exception | None) -> None:
        del members[self.name]
        self.broadcast(b"* " + self.name + b" left\n", faults=False)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Member, "127.0.0.1", port)
    await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))
