"""HttpReceiver's authentication with remembered valid headers: the throttle still decides
first, a refused header is never remembered."""

from __future__ import annotations

import base64

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from pydantic import SecretStr

from manycore_common.auth import Credentials
from manycore_common.config import AuthThrottle, Login
from manycore_common.loginthrottle import LoginThrottle
from manycore_httpreceiver import app as api


def _app(max_failures: int = 2) -> web.Application:
    app = web.Application()
    app[api.CREDENTIALS_KEY] = Credentials([Login(username="apa", password=SecretStr("banan"))])
    throttle = AuthThrottle.model_validate({"max-failures": max_failures, "delay-seconds": 0})
    app[api.THROTTLE_KEY] = LoginThrottle(throttle)
    app[api.TRUSTED_KEY] = ()
    app[api.VERIFIED_KEY] = {}
    return app


def _request(app: web.Application, user: str, password: str) -> web.Request:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = CIMultiDict({"Authorization": f"Basic {token}"})
    return make_mocked_request("POST", "/v1/mail/send", headers=headers, app=app)


async def test_valid_header_is_remembered_and_answers_its_login() -> None:
    app = _app()
    assert await api.authenticate(_request(app, "apa", "banan")) == (None, "apa")
    assert list(app[api.VERIFIED_KEY].values()) == ["apa"]
    assert await api.authenticate(_request(app, "apa", "banan")) == (None, "apa")


async def test_wrong_password_is_not_remembered() -> None:
    app = _app()
    refusal, login = await api.authenticate(_request(app, "apa", "wrong"))
    assert refusal is not None and refusal.status == 401 and login is None
    assert app[api.VERIFIED_KEY] == {}


async def test_remembered_header_is_refused_while_its_pair_is_locked() -> None:
    # A success does not launder failures: the pair (address, apa) locked by wrong
    # passwords refuses the right one too, remembered or not.
    app = _app(max_failures=2)
    assert (await api.authenticate(_request(app, "apa", "banan")))[0] is None
    for _ in range(2):
        await api.authenticate(_request(app, "apa", "wrong"))
    refusal, login = await api.authenticate(_request(app, "apa", "banan"))
    assert refusal is not None and refusal.status == 429 and login is None


async def test_the_table_is_bounded() -> None:
    app = _app()
    app[api.VERIFIED_KEY].update({f"x{n}": "apa" for n in range(api.MAX_VERIFIED)})
    assert (await api.authenticate(_request(app, "apa", "banan")))[0] is None
    assert len(app[api.VERIFIED_KEY]) == 1
