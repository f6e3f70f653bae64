"""kv: a key-value store every connection shares.

    SET colour dark blue     -> OK            (the value is the rest of the line)
    GET colour               -> dark blue     (or: error: no such key: colour)
    DEL colour               -> OK            (or: error: no such key: colour)
    QUIT                     -> bye, and the server closes
    anything else            -> error: unknown command

The store is one dict in the server process, so the service says
``shared_state=True``: tcpkit refuses to split it over ``--mode fork`` or
``--workers N`` (each process would have a dict of its own).
"""

from typing import ClassVar

from tcpkit import RequestError, Service, Session


class KV(Session):
    # One dict for every connection of this process (a class attribute, not
    # self.store = {}, which would be one per connection).  dict operations are
    # atomic, so thread mode's connections may use it at once.
    store: ClassVar[dict[bytes, bytes]] = {}

    def received(self, message: bytes) -> str | bytes:
        command, _, rest = message.partition(b" ")
        if command == b"SET" and b" " in rest:
            key, _, value = rest.partition(b" ")
            self.store[key] = value
            return "OK"
        if command == b"GET" and rest:
            found = self.store.get(rest)
            if found is None:
                raise no_such_key(rest)
            return found
        if command == b"DEL" and rest:
            if self.store.pop(rest, None) is None:
                raise no_such_key(rest)
            return "OK"
        if message == b"QUIT":
            self.close()  # after this reply; anything the client sent after QUIT is ignored
            return "bye"
        raise RequestError("unknown command")


def no_such_key(key: bytes) -> RequestError:
    # A RequestError is one "error: ..." reply; the connection stays open.
    return RequestError(f"no such key: {key.decode('utf-8', 'replace')}")


SERVICE = Service("kv", 7814, "a key-value store shared by every connection", session=KV,
                  shared_state=True)
