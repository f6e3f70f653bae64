#!/usr/bin/perl
# The reverse server as the article writes it: IO::Socket::INET, Listen, an
# accept loop, and each line sent back reversed.  Port 0 asks for a free one;
# the real port goes to stderr in tcpkit's format so the tests can find it.
use strict;
use warnings;
use IO::Socket::INET;

my $port = shift // 7800;
my $server = IO::Socket::INET->new(
    LocalAddr => '127.0.0.1',
    LocalPort => $port,
    Proto     => 'tcp',
    Listen    => 10,
    ReuseAddr => 1,
) or die "cannot listen on $port: $@\n";
$| = 1;
print STDERR "Listening on 127.0.0.1:", $server->sockport, " (reverse, mode=perl)\n";
$SIG{TERM} = sub { exit 0 };

while (my $client = $server->accept) {
    $client->autoflush(1);
    print "accept ", $client->peerhost, ":", $client->peerport, "\n";
    while (my $line = <$client>) {
        my $end = $line =~ s/(\r?\n)\z// ? $1 : "\n";
        print $client scalar(reverse $line), $end;
    }
    print "close ", $client->peerhost, "\n";
    close $client;
}
