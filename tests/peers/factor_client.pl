#!/usr/bin/perl
# The factor client as the article writes it: connect, send N, print the reply.
use strict;
use warnings;
use IO::Socket::INET;

my ($host, $port, $n) = @ARGV;
my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp')
    or die "cannot connect to $host:$port: $@\n";
$sock->autoflush(1);
print $sock "$n\n";
my $reply = <$sock>;
print defined $reply ? $reply : "no reply\n";
close $sock;
exit(defined $reply && $reply !~ /^error: / ? 0 : 1);
