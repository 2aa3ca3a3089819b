"""The engineer PIN: stored only as a salted scrypt hash, checked in constant time.

Format: ``scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>``. `aoi gui
--hash-pin` makes one for the `gui.engineer_pin_hash` configuration key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_N, _R, _P = 2**14, 8, 1  # about 50 ms and 16 MiB per check: cheap for a person, dear for a guesser
_DKLEN = 32
MIN_PIN_DIGITS = 4


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_pin(pin: str) -> None:
    if not (pin.isdigit() and len(pin) >= MIN_PIN_DIGITS):
        raise ValueError(f"a PIN is {MIN_PIN_DIGITS} or more digits")


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """The storable hash of `pin` (digits only, 4 or more) with a fresh random salt."""
    _check_pin(pin)
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def parse_pin_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, digest) of a stored hash; `ValueError` naming the problem when malformed."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("a PIN hash looks like 'scrypt$n$r$p$salt$hash'; make one with 'aoi gui --hash-pin'")
    try:
        n, r, p = (int(v) for v in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("the PIN hash has a malformed number or base64 part; make a new one") from None
    if n < 2**10 or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) or len(salt) < 8 or len(digest) < 16:
        raise ValueError("the PIN hash has weak or invalid scrypt parameters; make a new one")
    return n, r, p, salt, digest


def verify_pin(pin: str, stored: str | None) -> bool:
    """Whether `pin` matches `stored`; False without a stored hash (the role stays locked)."""
    if not stored or not pin.isdigit():
        return False
    n, r, p, salt, digest = parse_pin_hash(stored)
    candidate = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=2**26)
    return hmac.compare_digest(candidate, digest)
