"""Pseudonymising a column of one million educator IDs, against raw ``hmac`` in a loop.

Both sides compute HMAC-SHA-256 of every ID under the same key, in the same
process and run. The baseline is the plain standard-library loop an engineer
would write first; the gateway's path also normalises and validates every ID
and writes the letter-alphabet pseudonym. Two columns are measured: every ID
distinct (the worst case) and a realistic extract where each teacher appears
on several rows.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import Callable
from typing import Any

from gateway.pseudonym import Normalisation, Pseudonymizer, derive_agreement_key

N = 1_000_000


def _best_of(repeats: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def run(repeats: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(20261122)
    key = derive_agreement_key(b"k" * 32, agreement_id="bench", key_version=1, salt=b"s" * 32)
    pseudonymizer = Pseudonymizer(key, key_version=1, normalisation=Normalisation())
    distinct = [f"{i:09d}" for i in rng.sample(range(1, 10**9), N)]
    teachers = distinct[: N // 8]
    repeated = [rng.choice(teachers) for _ in range(N)]

    rows = []
    for label, column in (("1M distinct IDs", distinct), ("1M rows, ~125k teachers", repeated)):

        def baseline(column: list[str] = column) -> list[str]:
            return [hmac.new(key, x.encode(), hashlib.sha256).hexdigest() for x in column]

        def gateway(column: list[str] = column) -> list[str | None]:
            return pseudonymizer.pseudonymize_many(column)

        base = _best_of(repeats, baseline)
        ours = _best_of(repeats, gateway)
        rows.append(
            {
                "benchmark": f"pseudonymise {label}",
                "baseline": "stdlib hmac.new loop",
                "baseline_s": round(base, 3),
                "gateway_s": round(ours, 3),
                "ratio": round(ours / base, 2),
            }
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
