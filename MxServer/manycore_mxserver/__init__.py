"""MxServer: the public MX of the return-path domains. Never a relay."""
