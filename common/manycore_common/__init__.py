"""Manycore-Mail's shared library, one concern per module (docs/ARCHITECTURE.md#where-is-x).

Configuration and process:
    ``config``        the two YAML files, validated into frozen typed objects
    ``configscope``   which parts of the customer file each service loads (least privilege)
    ``lifecycle``     ``run_service``: arguments, config, logging, the two-phase stop
    ``loops``         a service's loops watched: one that dies of a bug stops the service
    ``workers``       several processes serving one port for the front doors (a worker's side)
    ``supervisor``    the parent of those workers: start, hand connections out, restart, stop
    ``health``        ``/metrics``, ``/livez`` and ``/readyz``
    ``logs``          JSON log lines
    ``tls``           server TLS contexts (self-signed when no certificate is given), reloaded
                      when the certificate files change
    ``redisconn``     Redis clients from a ``reliable-queue.redis`` section (one node or Sentinel)
    ``replicas``      writes acknowledged only once a replica has them (``WAIT``)
    ``redisready``    the one Redis readiness check and start-up wait (one stop rule)

Queues and events:
    ``keyspace``      every Redis key name, hash tags and ``reliable-queue.key-prefix``
    ``item``          the queue item format (JSON header line, then the payload)
    ``queue``         the reliable Redis queue: its keys and guarantees, push, reaper, requeue
    ``consumer``      one consumer of it: processing list, heartbeat, take, ack, hand-over,
                      retry, dead letter, release
    ``consuming``     a service's consumers: register when Redis is up, heartbeat, release
    ``queuescripts``  the queue's Lua (every key in KEYS)
    ``queuelegacy``   the queue's upgrade: the previous release's keys, unregistered lists
    ``queuectl``      ``manycore-queues``: stats, dead letters, requeue, trace, adopt
    ``queueinspect``  bounded look-ups: where a uuid is, one dead letter by id, unclassified
    ``queueview``     what ``manycore-queues`` prints (pure)
    ``operatorlogin`` the operator tools' Redis login (``operator``) and refusal messages
    ``trace``         per-message trace records ``trace:<uuid>``
    ``events``        the event schema, and pushing events (once, with once-markers)

Front doors (Receiver, HttpReceiver) and the SMTP services:
    ``message``       validation of a customer's message (pure)
    ``rawheaders``    where a header section ends and its fields, on raw bytes: the one
                      line-ending rule (pure; also the Transformer's and PostfixLog's edits)
    ``intake``        validate, wrap and push to P0 or P1, with the README's metrics
    ``grouppush``     group commit: concurrent messages share one Redis round trip
    ``idempotency``   one message per X-Uuid or Idempotency-Key within a window
    ``auth``          credential checks and the failed-login counter
    ``loginthrottle`` what a failed login counts against: (address, login), unknown names
    ``smtpserver``    what Receiver and MxServer share around aiosmtpd
    ``heaptrim``      free heap pages given back to the system after a burst (glibc)
    ``smtpreplies``   enhanced status codes for aiosmtpd's own replies

Feedback and the suppression list:
    ``feedbacktag``   per-recipient return paths, Message-IDs and unsubscribe addresses with
                      HMAC tags
    ``unsubscribe``   one-click unsubscribe tokens (RFC 8058)
    ``bounce_rules``  status code and reply text → bounce category (PostfixLog and MxServer)
    ``suppression``   the list's entries and keys (pure)
    ``suppressionstore``  its Lua: entries written with the events that cause them, look-ups,
                      the operator's operations
    ``suppressionlookup``  the look-up's EVALSHA, pre-packed on held connections
    ``suppressionpolicy``  which events suppress whom, for how long
    ``suppressionmetrics``  its counters and size gauge
    ``suppressioncli``  ``manycore-suppressions``

DNS:
    ``dnsrecords``    the records a config needs (pure)
    ``dnscheck``      ``manycore-dns --check``: what DNS answers, judged
    ``dnscli``        ``manycore-dns``
"""

__version__ = "0.1.0"
