"""The webhook client's pure parts: what is logged of the URL, the headers of a POST."""

from __future__ import annotations

from manycore_backdata import signature
from manycore_backdata.webhook import Webhook, WebhookSettings, redacted


def test_logged_url_loses_credentials_and_query() -> None:
    url = "https://user:pw@hooks.example.com:8443/in?token=abc#frag"
    assert redacted(url) == "https://hooks.example.com:8443/in"
    assert redacted("http://[::1]/events?k=v") == "http://[::1]/events"


def test_settings_never_show_secrets() -> None:
    settings = WebhookSettings(
        url="https://hooks.example.com/in?token=abc",
        timeout=1,
        connections=1,
        headers=(("Authorization", "Bearer abc"),),
        secret=b"whsec",
    )
    text = repr(settings)
    assert "abc" not in text and "whsec" not in text


def test_signed_only_with_a_secret() -> None:
    plain = Webhook(WebhookSettings(url="http://127.0.0.1:1/", timeout=1, connections=1))
    assert plain.request_headers(b"[]", 1_700_000_000) == {"Content-Type": "application/json"}
    signed = Webhook(
        WebhookSettings(url="http://127.0.0.1:1/", timeout=1, connections=1, secret=b"k")
    )
    headers = signed.request_headers(b"[]", 1_700_000_000.9)
    assert headers[signature.HEADER] == signature.sign(b"k", 1_700_000_000, b"[]")
