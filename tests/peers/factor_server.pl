#!/usr/bin/perl
# The factor server as the article writes it: IO::Socket::INET, Listen, an
# accept loop, and each number answered with its prime factors (trial
# division: small numbers only).  The real port goes to stderr in tcpkit's
# format so the tests can find it.
use strict;
use warnings;
use IO::Socket::INET;

sub factors {
    my ($n) = @_;
    my @f = $n < 0 ? (-1) : ();
    $n = -$n if $n < 0;
    for (my $d = 2; $d * $d <= $n; $d++) {
        while ($n % $d == 0) { push @f, $d; $n /= $d }
    }
    push @f, $n if $n > 1;
    return join ' ', @f;
}

my $port = shift // 7801;
my $server = IO::Socket::INET->new(
    LocalAddr => '127.0.0.1',
    LocalPort => $port,
    Proto     => 'tcp',
    Listen    => 10,
    ReuseAddr => 1,
) or die "cannot listen on $port: $@\n";
$| = 1;
print STDERR "Listening on 127.0.0.1:", $server->sockport, " (factor, mode=perl)\n";
$SIG{TERM} = sub { exit 0 };

while (my $client = $server->accept) {
    $client->autoflush(1);
    print "accept ", $client->peerhost, "\n";
    while (my $line = <$client>) {
        my $end = $line =~ s/(\r?\n)\z// ? $1 : "\n";
        if ($line =~ /\A\s*([+-]?\d{1,15})\s*\z/ && $1 != 0) {
            print $client factors($1 + 0), $end;
        } else {
            print $client "error: not an integer: \"$line\"", $end;
        }
    }
    close $client;
}
