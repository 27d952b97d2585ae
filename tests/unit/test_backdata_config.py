"""BackData's config section: the old keys still load, the new ones are checked, headers and
the signing secret may come from files and never show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from manycore_common.config import BackDataSection, ConfigError, load_config
from tests.helpers import CUSTOMER_EXAMPLE, GLOBAL_EXAMPLE


def section(data: dict[str, Any], base: Path | None = None) -> BackDataSection:
    return BackDataSection.model_validate(data, context={"base_dir": base or Path(".")})


def test_example_and_old_files_load() -> None:
    config = load_config(GLOBAL_EXAMPLE, CUSTOMER_EXAMPLE)
    backdata = config.customer.backdata
    assert backdata is not None
    assert backdata.post_url == "http://localhost:8090"
    assert (backdata.batch_size, backdata.concurrency, backdata.tls_verify) == (50, 4, True)
    old = section(
        {
            "post-url": "http://localhost:8090",
            "batch-size": 10,
            "max-event-age-seconds": 60,
            "signing-secret": "s",
            "bounce-manager": {"secret": "apa", "cid": 1, "url": "http://localhost:8091"},
        }
    )
    assert old.max_event_age_seconds == 60 and old.retry_max_seconds == 300


def test_every_example_key_is_commented() -> None:
    text = CUSTOMER_EXAMPLE.read_text()
    block = text[text.index("\nbackdata:\n") : text.index("\nredis:\n")]
    keys = yaml.safe_load(block)["backdata"]
    lines = block.splitlines()
    # reliable-queue and prometheus are described once, at the top of the file.
    for key in set(keys) - {"reliable-queue", "prometheus"}:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}:"))
        assert lines[index - 1].lstrip().startswith("#"), key


def test_secret_and_headers_from_files_never_show(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("whsec_file\n")
    (tmp_path / "headers").write_text("# token\nAuthorization: Bearer abc\nX-Tenant: 42\n")
    loaded = section(
        {
            "post-url": "https://hooks.example.com/in",
            "signing-secret-file": "secret",
            "headers-file": "headers",
        },
        tmp_path,
    )
    assert loaded.signing_secret is not None
    assert loaded.signing_secret.get_secret_value() == "whsec_file"
    assert {k: v.get_secret_value() for k, v in loaded.headers.items()} == {
        "Authorization": "Bearer abc",
        "X-Tenant": "42",
    }
    assert "Bearer abc" not in repr(loaded) and "whsec_file" not in repr(loaded)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"post-url": "ftp://x"}, "must be an http:// or https:// URL"),
        ({"post-url": "localhost:8090"}, "must be an http:// or https:// URL"),
        ({"headers": {"Bad Name": "x"}}, "is not a valid header name"),
        ({"headers": {"Content-Type": "text/plain"}}, "is set by BackData itself"),
        ({"headers": {"X-A": "a\r\nX-Injected: 1"}}, "contains a line break"),
        ({"retry-initial-seconds": 10, "retry-max-seconds": 1}, "retry-max-seconds must be"),
        ({"concurrency": 0}, "greater than or equal to 1"),
        ({"timeout-seconds": 0}, "greater than 0"),
        ({"headers": {"X": "1"}, "headers-file": "h"}, "not both"),
    ],
)
def test_bad_values_are_refused(change: dict[str, Any], message: str, tmp_path: Path) -> None:
    (tmp_path / "h").write_text("X: 2\n")
    with pytest.raises(ValidationError) as failure:
        section({"post-url": "http://127.0.0.1:1/", **change}, tmp_path)
    assert message in str(failure.value)


def test_headers_file_needs_name_colon_value(tmp_path: Path) -> None:
    (tmp_path / "h").write_text("Authorization Bearer abc\n")
    with pytest.raises(ValidationError) as failure:
        section({"post-url": "http://127.0.0.1:1/", "headers-file": "h"}, tmp_path)
    assert "headers-file line 1" in str(failure.value)
    assert "Bearer abc" not in str(failure.value)


def test_problems_are_named_by_path(tmp_path: Path) -> None:
    data = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())
    data["backdata"]["post-url"] = "nope"
    customer = tmp_path / "customer.yaml"
    customer.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as failure:
        load_config(GLOBAL_EXAMPLE, customer)
    assert failure.value.problems == [
        "customer.yaml: backdata.post-url: must be an http:// or https:// URL with a host"
    ]
