"""chat: one room; every line a member writes reaches every other member.

    S: welcome guest1                  (on connect: guestN, N unique)
    C: NICK ann                        S: you are now ann   (or: error: nickname taken)
    C: hello                           (not echoed; the others get "ann: hello")
    C: QUIT                            S: bye               (and the server closes)

The others see ``* ann joined`` and ``* ann left``.  A member who never reads
is dropped once 1 MiB of lines waits for it (the others see it leave).

The room, the guest counter and the nicknames live in the server's hub
(``self.hub``): in the server process by default, so the service says
``shared_state="hub"``; with ``tcpkit serve chat --pubsub redis://HOST:PORT``
they live in Redis, and one room spans ``--workers N``, ``--mode fork`` and
several servers behind a load balancer (docs/rooms-redis.md).
"""

from tcpkit import RequestError, Service, Session
from tcpkit.hub import HubUnavailable

ROOM = "lobby"
UNAVAILABLE = "chat unavailable, try again later"


class Chat(Session):
    def __init__(self) -> None:
        # The hooks are async (they await the hub).  tcpkit runs one connection's
        # hooks one at a time, in arrival order: a NICK is done before the next
        # line goes out under the new name, each member's lines reach the others
        # in the order written, and the lines after QUIT never run.
        self.name = ""  # set once connected() has a unique one

    async def connected(self) -> str:
        try:
            self.name = await self.guest_name()
        except HubUnavailable:  # Redis is away: say so and close
            self.close()
            return f"error: {UNAVAILABLE}"
        await self.hub.join(ROOM, self)
        await self.hub.publish(ROOM, f"* {self.name} joined".encode(), self)
        return f"welcome {self.name}"

    async def received(self, message: bytes) -> str | None:
        command, _, argument = message.partition(b" ")
        if command == b"NICK" and argument:
            return await self.nick(argument.decode("utf-8", "replace"))
        if message == b"QUIT":
            self.close()
            return "bye"
        # To every other member (the hub skips the sender): nothing comes back.
        await self.hub.publish(ROOM, self.name.encode() + b": " + message, self)
        return None

    async def disconnected(self, reason: str) -> None:
        if not self.name:
            return  # never joined
        await self.hub.leave(ROOM, self)
        await self.hub.release(self.name, self)  # first: free once the others hear it left
        await self.hub.publish(ROOM, f"* {self.name} left".encode(), self)

    async def guest_name(self) -> str:
        while True:  # guestN is unique, but someone may have taken it with NICK
            name = f"guest{await self.hub.next_id('guest')}"
            if await self.hub.claim(name, self):
                return name

    async def nick(self, name: str) -> str:
        try:
            mine = name == self.name or await self.hub.claim(name, self)
        except HubUnavailable:
            raise RequestError(UNAVAILABLE) from None
        if not mine:
            raise RequestError("nickname taken")  # -> "error: nickname taken"
        if name != self.name:
            await self.hub.release(self.name, self)
            self.name = name
        return f"you are now {name}"


SERVICE = Service("chat", 7815, "a chat room", session=Chat, shared_state="hub")
