"""MxServer: the public MX of the return-path domains. Never a relay. Turns the bounces,
auto-replies, complaints and unsubscribe mail that our feedback tags prove into events (with
their suppression entries), and keeps what no rule understands in the unclassified lists."""
