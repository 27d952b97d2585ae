"""Transformer: messages/s of the whole transform function (headers, body hash, RSA-2048 DKIM
signature) against a bare OpenSSL RSA-2048 PKCS#1 v1.5 SHA-256 signature of the same message
via ``cryptography``, on one core; the DKIM part alone against the same signature (what a
relaxed/relaxed signer must add: the body canonicalized and hashed apart, the signed fields
canonicalized, the field built); and the cost of VERP: a message to 5 recipients (5 copies,
each with its own return path and signature, one body hash) against the same message to 1,
in messages/s and recipients/s.

    python -m bench.transformer            # full run (make bench)
    python -m bench.transformer --quick    # smoke run (make test)
"""

from __future__ import annotations

import argparse
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench.common import Row, interleaved, pin_to_one_core, table, write
from manycore_transformer import bodycanon, dkim
from manycore_transformer.headers import join_message, split_message
from manycore_transformer.transform import SIGNED_HEADERS, DomainSigner, Settings, transform

#: Recipients per message in the VERP case.
MANY = 5
RCPTS = [f"user{i}@example.net" for i in range(MANY)]

LINE = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"


def message(size: int) -> bytes:
    head = (
        "From: Shop <news@example.com>\r\nTo: Alice <alice@example.net>\r\n"
        "Subject: Your order\r\nX-Uuid: abc123def456\r\nX-Stream-Id: spring-sale\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    body = LINE * max(1, (size - len(head)) // len(LINE))
    return (head + body).encode()


def setup() -> tuple[rsa.RSAPrivateKey, Settings]:
    key = rsa.generate_private_key(65537, 2048)
    signing_key = dkim.load_key(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = Settings(
        domains={"example.com": DomainSigner("example.com", "example.com", "mailer", signing_key)},
        x_mailer="Manycore-Mail",
        feedback_key=b"bench-feedback-secret-0123456789abcdef",
        inject=(("List-Unsubscribe", "<mailto:{{unsubscribe-address}}>"),),
        sender_id="bench",
    )
    return key, settings


def run(sizes: list[int], seconds: float, rounds: int) -> list[Row]:
    key, settings = setup()
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    rows = []
    for size in sizes:
        data = message(size)

        def subject_fn(data: bytes = data) -> object:
            return transform(data, settings, time.time(), RCPTS[:1])

        def baseline_fn(data: bytes = data) -> object:
            return key.sign(data, pkcs1, sha256)

        subject, baseline, ratio = interleaved(subject_fn, baseline_fn, seconds, rounds)
        rows.append(
            Row(
                "transformer",
                f"{size // 1000} KB",
                "transform (RSA-2048)",
                subject,
                "bare OpenSSL RSA-2048 sign",
                baseline,
                ratio,
            )
        )
    return rows


def dkim_only(data: bytes, settings: Settings, now: float) -> tuple[bytes, bytes]:
    """The DKIM part of ``transform`` alone, with the same code: the header fields split
    out, the relaxed body hash, one RSA signature over the relaxed signed fields, the
    DKIM-Signature field prepended. What any relaxed/relaxed signer must do beyond the bare
    signature (canonicalize the body and hash it apart from the header fields); no header
    changes, no feedback tags, no VERP. The header section and the body apart, as
    ``transform``'s copies hold them (a joined 500 KB message is a fresh mmap per call)."""
    fields, body = split_message(data)
    signer = settings.domains["example.com"]
    signature = dkim.sign(
        fields,
        bodycanon.body_hash(body),
        key=signer.rsa,
        domain=signer.domain,
        selector=signer.selector,
        timestamp=int(now),
        header_names=SIGNED_HEADERS,
    )
    return join_message([signature, *fields], b""), body


def run_dkim_only(sizes: list[int], seconds: float, rounds: int) -> list[Row]:
    """How much of the gap to the bare signature is DKIM itself, and how much the rest."""
    key, settings = setup()
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    rows = []
    for size in sizes:
        data = message(size)

        def subject_fn(data: bytes = data) -> object:
            return dkim_only(data, settings, time.time())

        def baseline_fn(data: bytes = data) -> object:
            return key.sign(data, pkcs1, sha256)

        subject, baseline, ratio = interleaved(subject_fn, baseline_fn, seconds, rounds)
        rows.append(
            Row(
                "transformer",
                f"DKIM alone, {size // 1000} KB",
                "split, body hash, sign",
                subject,
                "bare OpenSSL RSA-2048 sign",
                baseline,
                ratio,
            )
        )
    return rows


def run_verp(sizes: list[int], seconds: float, rounds: int) -> list[Row]:
    """5 recipients against 1, same message: what each extra recipient's copy costs."""
    _, settings = setup()
    rows = []
    for size in sizes:
        data = message(size)

        def many(data: bytes = data) -> object:
            return transform(data, settings, time.time(), RCPTS)

        def one(data: bytes = data) -> object:
            return transform(data, settings, time.time(), RCPTS[:1])

        many_rate, one_rate, ratio = interleaved(many, one, seconds, rounds)
        case = f"VERP, {size // 1000} KB"
        rows.append(
            Row(
                "transformer", case, f"{MANY} recipients", many_rate, "1 recipient", one_rate, ratio
            )
        )
        rows.append(
            Row(
                "transformer",
                case,
                f"{MANY} recipients",
                many_rate * MANY,
                "1 recipient",
                one_rate,
                ratio * MANY,
                unit="rcpt/s",
            )
        )
    return rows


def extra_recipient_cost(rows: list[Row]) -> list[str]:
    """Per size: time one more recipient adds to a message, from the msg/s rows."""
    lines = []
    for r in rows:
        if r.unit == "msg/s":
            extra = (1 / r.subject_rate - 1 / r.baseline_rate) / (MANY - 1)
            lines.append(
                f"{r.case}: each extra recipient adds {extra * 1e6:,.0f} µs "
                f"(a 1-recipient message takes {1e6 / r.baseline_rate:,.0f} µs)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.transformer")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--sizes", default="5000,50000,500000", help="message sizes, bytes")
    args = parser.parse_args()
    core = pin_to_one_core()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        rows = run(sizes[:2], seconds=0.05, rounds=1)
        rows += run_dkim_only(sizes[:1], seconds=0.05, rounds=1)
        verp = run_verp(sizes[1:2], seconds=0.05, rounds=1)
    else:
        rows = run(sizes, seconds=1.0, rounds=7)
        rows += run_dkim_only(sizes, seconds=1.0, rounds=7)
        verp = run_verp(sizes, seconds=1.0, rounds=7)
    costs = extra_recipient_cost(verp)
    print(f"Transformer on one core (core {core}), medians of interleaved rounds:")
    print(table(rows + verp))
    print(*costs, sep="\n")
    if not args.quick:
        paths = write(
            "transformer",
            rows + verp,
            "Messages/s of the Transformer's transform function against a bare OpenSSL "
            "RSA-2048 signature of the same message, one core, medians of 7 interleaved "
            '1-second rounds. "DKIM alone" rows: the DKIM part of transform '
            "by itself (header fields split out, relaxed body hash, one signature, the field "
            "prepended; no header changes, no feedback tags), against the same bare "
            "signature: what any relaxed/relaxed signer adds. VERP rows: a message to "
            f"{MANY} recipients ({MANY} signed copies, one body hash) against the same "
            "message to 1, in messages/s and recipients/s.\n\n"
            + "\n".join(f"- {c}" for c in costs),
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
