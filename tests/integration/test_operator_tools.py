"""The operator tools as the operator's ACL user (``redis.server.users.operator``), against a
real redis-server started with the generated rules: ``manycore-queues`` drop / requeue by id
(dead letters of two different queues), requeue QUEUE, stats, dead, peek, trace;
``manycore-suppressions`` add, import, get, list, size, delete, purge. Every command passing with
``ACL LOG`` empty afterwards is the proof. Run with the Redis pod's read-only login instead,
a write is refused with a message naming the config keys to set, not a traceback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from redis import Redis as SyncRedis

from manycore_common import item as item_format
from manycore_common import keyspace, queuectl, suppressioncli
from manycore_redis import acl
from tests.helpers import GLOBAL_EXAMPLE, LOOPBACK, RedisServer
from tests.integration.test_redis_acl import EV, KS, P0, PASSWORD, settings
from tests.integration.test_redis_module import NO_RETRY

DEAD = keyspace.Keyspace("")


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    args = [arg for line in acl.service_rules(settings(), KS) for arg in ("--" + line).split()]
    server = RedisServer(tmp_path_factory.mktemp("operator"), None, *args).start()
    try:
        yield server.port
    finally:
        server.stop()


@pytest.fixture
def admin(port: int) -> Iterator[SyncRedis]:
    client = SyncRedis(host=LOOPBACK, port=port, retry=NO_RETRY)
    client.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        client.flushall()
        client.close()


def customer(tmp_path: Path, port: int, operator: bool = True) -> Path:
    """A customer file with the Redis pod's login (the read-only exporter) and, with
    ``operator``, the operator section's."""
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")

    def login(user: str) -> dict[str, object]:
        redis = {"hostname": LOOPBACK, "port": port, "username": f"mc-{user}"}
        return {"reliable-queue": {"redis": {**redis, "password-file": "redis-password"}}}

    data = {"redis": login("exporter"), **({"operator": login("operator")} if operator else {})}
    path = tmp_path / "customer.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(tmp_path: Path, port: int, capsys: pytest.CaptureFixture[str]) -> Run:
    def tool(
        main: Callable[[list[str]], None], *argv: str, operator: bool = True
    ) -> tuple[int, str, str]:
        files = ["--global-config-file", str(GLOBAL_EXAMPLE)]
        files += ["--customer-config-file", str(customer(tmp_path, port, operator))]
        with pytest.raises(SystemExit) as exited:
            main([*files, *argv])
        out = capsys.readouterr()
        assert isinstance(exited.value.code, int)
        return exited.value.code, out.out, out.err

    return tool


def dead_letter(admin: SyncRedis, queue: str) -> str:
    raw = item_format.new_item(b"payload", source="test", uuid="u-" + queue)
    admin.lpush(DEAD.dead(queue), raw)
    return str(item_format.decode(raw).id)


def acl_log(admin: SyncRedis) -> list[object]:
    return list(admin.execute_command("ACL", "LOG"))  # type: ignore[no-untyped-call]


def test_queues_dead_letters_as_the_operator(admin: SyncRedis, run: Run) -> None:
    dropped, requeued, again = (dead_letter(admin, q) for q in (P0, EV, P0))
    assert run(queuectl.main, "stats")[0] == 0
    assert len(run(queuectl.main, "dead", P0)[1].splitlines()) == 2
    assert run(queuectl.main, "peek", dropped)[0] == 0
    assert run(queuectl.main, "trace", "u-" + EV)[0] == 0
    assert run(queuectl.main, "drop", dropped)[:2] == (0, f"dropped {dropped} ({P0})\n")
    assert run(queuectl.main, "requeue", requeued)[:2] == (0, f"requeued {requeued} ({EV})\n")
    assert admin.llen(EV) == 1 and admin.llen(DEAD.dead(EV)) == 0
    assert run(queuectl.main, "requeue", P0)[:2] == (0, "requeued 1\n")
    assert admin.llen(P0) == 1 and admin.llen(DEAD.dead(P0)) == 0
    head = admin.lindex(P0, 0)
    assert isinstance(head, bytes) and again in head.decode()
    assert acl_log(admin) == []


def test_suppressions_as_the_operator(admin: SyncRedis, run: Run, tmp_path: Path) -> None:
    cli = suppressioncli.main
    add = ("add", "a@example.net", "--domain", "example.com")
    assert run(cli, *add)[:2] == (0, '{"added": 1}\n')
    (tmp_path / "list.csv").write_text("address,domain\nb@example.net,example.org\n")
    code, out, _ = run(cli, "import", str(tmp_path / "list.csv"))
    assert code == 0 and json.loads(out)["added"] == 1
    assert json.loads(run(cli, "get", "a@example.net")[1])["reason"] == "manual"
    assert "a@example.net" in run(cli, "list", "--domain", "example.com")[1]
    assert json.loads(run(cli, "size")[1]) == {"example.com": 1, "example.org": 1}
    assert run(cli, "purge", "--domain", "example.com")[:2] == (0, '{"example.com": 0}\n')
    assert run(cli, "delete", "a@example.net")[:2] == (0, '{"deleted": 1}\n')
    assert acl_log(admin) == []


@pytest.mark.parametrize("operator", [True, False])
def test_the_read_only_login_is_refused_with_a_clear_message(
    admin: SyncRedis, run: Run, operator: bool
) -> None:
    """``--section redis`` (the default without an operator section): the exporter's user
    reads, but may not drop a dead letter nor add a suppression."""
    letter = dead_letter(admin, P0)
    section = ["--section", "redis"] if operator else []
    dead = run(queuectl.main, *section, "dead", P0, operator=operator)
    assert dead[0] == 0 and letter in dead[1]
    for main, argv in (
        (queuectl.main, ("drop", letter)),
        (suppressioncli.main, ("add", "a@example.net", "--domain", "example.com")),
    ):
        code, _, err = run(main, *section, *argv, operator=operator)
        assert code == 1
        assert "refused a command of the redis section's user" in err
        assert "redis.server.users.operator" in err and "--section operator" in err
        assert "operator.reliable-queue.redis" in err and "Traceback" not in err
    assert admin.llen(DEAD.dead(P0)) == 1
    assert acl_log(admin) != []  # the refusals were Redis', not a guess of ours
