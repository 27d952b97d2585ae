"""The Transformer's batches (pure): what a signing worker runs on a batch of items
(``transform_batch``, in a process of the pool when ``workers`` > 1), and the to-postfix
items made from one result (``split_items``). ``service`` does the Redis IO around them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from manycore_common import item as item_format
from manycore_common.item import Item

from . import settings as settings_module
from .identity import TransformError
from .transform import Settings, Transformed, transform

#: The ``source`` of the items the Transformer writes.
SOURCE = "transformer"

_worker_settings: Settings | None = None


def init_worker(spec: settings_module.SettingsSpec) -> None:
    global _worker_settings
    _worker_settings = settings_module.build(spec)


#: One message to transform: its bytes and the recipients in its item (None: To and Cc).
Job = tuple[bytes, tuple[str, ...] | None]


def transform_batch(
    jobs: Sequence[Job], now: float, settings: Settings | None = None
) -> list[tuple[str, Any]]:
    """("ok", Transformed) or ("error", TransformError) per job; runs in a worker."""
    active = settings or _worker_settings
    assert active is not None, "worker not initialised"
    out: list[tuple[str, Any]] = []
    for payload, rcpts in jobs:
        try:
            out.append(("ok", transform(payload, active, now, rcpts)))
        except TransformError as exc:
            out.append(("error", exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the other messages
            # An input that trips a bug goes to the dead-letter list like any message we
            # cannot transform (nothing lost: it can be requeued once fixed), rather than
            # taking down the loop and, taken again after a restart, the service for good.
            out.append(("error", internal_error(exc)))
    return out


def internal_error(exc: Exception) -> TransformError:
    """The dead-letter reason of a message whose transform raised ``exc`` (a bug)."""
    text = f"internal error: {type(exc).__name__}: {exc}"
    return TransformError("internal-error", text[:300])


def item_rcpts(item: Item) -> tuple[str, ...] | None:
    """The recipients the receiver determined; None for an item that bypassed the receivers
    (the Transformer then reads To and Cc)."""
    rcpts = item.header.get("rcpts")
    if isinstance(rcpts, list) and rcpts:
        return tuple(str(r) for r in rcpts)
    return None


def split_items(header: dict[str, Any], result: Transformed) -> list[bytes]:
    """One to-postfix item per recipient (VERP): each its own id, recipient, return path and
    signed copy; the rest of the header as the input item had it."""
    base = dict(header)
    base.update(
        {
            "attempts": 0,
            "source": SOURCE,
            "uuid": result.uuid,
            "stream_id": result.stream_id,
            "from_domain": result.from_domain,
        }
    )
    items = []
    for copy in result.copies:
        line = item_format.encode(
            {
                **base,
                "id": item_format.new_item_id(),
                "rcpts": [copy.rcpt],
                "return_path": copy.return_path,
            },
            b"",
        )
        # One join, so the (shared) body is copied once, into the item itself.
        items.append(b"".join((line, copy.head, copy.body)))
    return items
