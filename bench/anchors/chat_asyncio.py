"""Chat room as an asyncio Protocol (data_received, split on \\n). --uvloop uses uvloop."""
import asyncio, itertools, sys
members, guests = {}, itertools.count(1)  # the room: name -> Member

class Member(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""
        self.name = b"guest%d" % next(guests)
        transport.write(b"welcome " + self.name + b"\n")
        self.broadcast(b"* " + self.name + b" joined\n")
        members[self.name] = self
    def data_received(self, data):
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            if line == b"QUIT":
                self.transport.write(b"bye\n")
                self.transport.close()
                break
            elif not line.startswith(b"NICK "):
                self.broadcast(self.name + b": " + line + b"\n")
            elif line[5:] in members:
                self.transport.write(b"error: nickname taken\n")
            else:
                self.name, members[line[5:]] = line[5:], members.pop(self.name)
                self.transport.write(b"you are now " + self.name + b"\n")
    def broadcast(self, data):
        for member in members.values():
            if member is not self:
                member.transport.write(data)
    def connection_lost(self, exc):
        del members[self.name]
        self.broadcast(b"* " + self.name + b" left\n")

if "--uvloop" in sys.argv:
    import uvloop
    uvloop.install()
loop = asyncio.new_event_loop()
loop.run_until_complete(loop.create_server(Member, "127.0.0.1", int(sys.argv[1]), backlog=4096))
loop.run_forever()
