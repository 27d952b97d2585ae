"""Transformer: messages/s of the whole transform function (headers, body hash, RSA-2048 DKIM
signature) against a bare OpenSSL RSA-2048 PKCS#1 v1.5 SHA-256 signature of the same message
via ``cryptography``, on one core.

    python -m bench.transformer            # full run (make bench)
    python -m bench.transformer --quick    # smoke run (make test)
"""

from __future__ import annotations

import argparse
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench.common import Row, interleaved, pin_to_one_core, table, write
from manycore_transformer import dkim
from manycore_transformer.transform import DomainSigner, Settings, transform

LINE = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"


def message(size: int) -> bytes:
    head = (
        "From: Shop <news@example.com>\r\nTo: Alice <alice@example.net>\r\n"
        "Subject: Your order\r\nX-Uuid: abc123def456\r\nX-Stream-Id: spring-sale\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    body = LINE * max(1, (size - len(head)) // len(LINE))
    return (head + body).encode()


def run(sizes: list[int], seconds: float, rounds: int) -> list[Row]:
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
        inject=(("List-Unsubscribe", "<mailto:unsub-{{uuid}}@{{return-path-domain}}>"),),
        sender_id="bench",
    )
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    rows = []
    for size in sizes:
        data = message(size)

        def subject_fn(data: bytes = data) -> object:
            return transform(data, settings, time.time())

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


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.transformer")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--sizes", default="5000,50000,500000", help="message sizes, bytes")
    args = parser.parse_args()
    core = pin_to_one_core()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        rows = run(sizes[:2], seconds=0.05, rounds=1)
    else:
        rows = run(sizes, seconds=1.0, rounds=7)
    print(f"Transformer on one core (core {core}), medians of interleaved rounds:")
    print(table(rows))
    if not args.quick:
        paths = write(
            "transformer",
            rows,
            "Messages/s of the Transformer's transform function against a bare OpenSSL "
            "RSA-2048 signature of the same message, one core, medians of 7 interleaved "
            "1-second rounds.",
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
