#!/usr/bin/perl
# The reverse client as the article writes it: connect with IO::Socket::INET,
# send each line of stdin, print each reply.  With --pipeline it sends
# everything first, half-closes (shutdown 1) and then reads every reply.
use strict;
use warnings;
use IO::Socket::INET;

my $pipeline = @ARGV && $ARGV[0] eq '--pipeline' ? shift : 0;
my ($host, $port) = @ARGV;
my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp')
    or die "cannot connect to $host:$port: $@\n";
$sock->autoflush(1);
binmode STDIN;
binmode STDOUT;
$| = 1;
if ($pipeline) {
    print $sock $_ while <STDIN>;
    $sock->shutdown(1);
    print while <$sock>;
} else {
    while (my $line = <STDIN>) {
        print $sock $line;
        my $reply = <$sock>;
        last unless defined $reply;
        print $reply;
    }
}
close $sock;
