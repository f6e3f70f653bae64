# Chat room with IO::Select: one process, one select loop. Usage: perl chat_perl.pl PORT
use strict;
use IO::Select; use IO::Socket; use Socket qw(IPPROTO_TCP TCP_NODELAY);
$SIG{PIPE} = 'IGNORE';    # a member gone mid-broadcast must not kill the room
my $server = IO::Socket::INET->new(Proto => 'tcp', LocalAddr => '127.0.0.1', LocalPort => shift,
                                   Listen => SOMAXCONN, ReuseAddr => 1) or die "server: $!\n";
my $select = IO::Select->new($server);
my (%name, %buf, $guests);    # by socket
sub broadcast {
    my ($from, $line) = @_;
    print $_ "$line\n" for grep { $_ != $from && $_ != $server } $select->handles;
}
sub leave {
    my $h = shift;
    $select->remove($h);
    broadcast($h, "* $name{$h} left");
    delete $name{$h}; delete $buf{$h}; close $h;
}
for (;;) {
    for my $h ($select->can_read) {
        if ($h == $server) {
            my $new = $server->accept or next;
            $new->setsockopt(IPPROTO_TCP, TCP_NODELAY, 1);    # lines go out as they are written
            $name{$new} = 'guest' . ++$guests;
            print $new "welcome $name{$new}\n";
            broadcast($new, "* $name{$new} joined");
            $select->add($new);
        } elsif (!sysread $h, $buf{$h}, 65536, length $buf{$h}) {
            leave($h);
        } else {
            while (exists $buf{$h} and $buf{$h} =~ s/^(.*)\n//) {
                my $line = $1;
                if ($line eq 'QUIT') { print $h "bye\n"; leave($h) }
                elsif ($line !~ /^NICK (.*)/) { broadcast($h, "$name{$h}: $line") }
                elsif (grep { $_ eq $1 } values %name) { print $h "error: nickname taken\n" }
                else { $name{$h} = $1; print $h "you are now $1\n" }
            }
        }
    }
}
