"""The Redis pod: redis-server run as a durable queue store, its backups, and queue metrics.

(Named manycore_redis: a package called ``redis`` would shadow redis-py.)"""
