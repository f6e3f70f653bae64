"""Chat room on Twisted: LineReceiver + Factory (the epoll reactor, Linux's default)."""
import itertools, sys

from twisted.internet import protocol, reactor
from twisted.protocols.basic import LineReceiver


class Member(LineReceiver):
    delimiter = b"\n"
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)  # lines go out as they are written
        self.name = b"guest%d" % next(self.factory.guests)
        self.sendLine(b"welcome " + self.name)
        self.broadcast(b"* " + self.name + b" joined")
        self.factory.members[self.name] = self
    def lineReceived(self, line):
        members, nick = self.factory.members, line[5:]
        if line == b"QUIT":
            self.sendLine(b"bye")
            self.transport.loseConnection()
        elif not line.startswith(b"NICK "):
            self.broadcast(self.name + b": " + line)
        elif nick in members:
            self.sendLine(b"error: nickname taken")
        else:
            self.name, members[nick] = nick, members.pop(self.name)
            self.sendLine(b"you are now " + nick)
    def broadcast(self, line):
        for member in self.factory.members.values():
            if member is not self:
                member.sendLine(line)
    def connectionLost(self, reason):
        del self.factory.members[self.name]
        self.broadcast(b"* " + self.name + b" left")


factory = protocol.ServerFactory.forProtocol(Member)
factory.members, factory.guests = {}, itertools.count(1)
reactor.listenTCP(int(sys.argv[1]), factory, backlog=4096, interface="127.0.0.1")
reactor.run()
