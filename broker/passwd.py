"""Mosquitto password-file lines, written and checked without the mosquitto_passwd binary.

Mosquitto 2.x reads ``user:$7$iterations$salt$hash`` lines: PBKDF2-HMAC-SHA512 over the password
with a random salt, salt and 64-byte hash in standard base64 (what ``mosquitto_passwd`` writes by
default). The broker takes the iteration count from each line, so any count works.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.errors import AresError

PBKDF2_SHA512 = "7"  # Mosquitto's hash type id
# mosquitto_passwd's own default. The passwords we generate carry 256 random bits, which no
# iteration count would strengthen; a low one keeps every CONNECT cheap for the broker.
DEFAULT_ITERATIONS = 101
SALT_BYTES = 12  # as mosquitto_passwd
HASH_BYTES = 64  # SHA-512 output
# secrets.token_urlsafe(32): 43 characters from [A-Za-z0-9_-], 256 bits.
PASSWORD_BYTES = 32


class PasswordFileError(AresError, ValueError):
    """A password-file line or user name that Mosquitto would not accept."""


@dataclass(frozen=True, slots=True)
class PasswordEntry:
    """One parsed ``user:$7$...`` line."""

    username: str
    iterations: int
    salt: bytes
    digest: bytes

    def line(self) -> str:
        """The line as Mosquitto reads it (no newline)."""
        salt = base64.b64encode(self.salt).decode()
        digest = base64.b64encode(self.digest).decode()
        return f"{self.username}:${PBKDF2_SHA512}${self.iterations}${salt}${digest}"

    def verify(self, password: str) -> bool:
        """Whether ``password`` is this user's (constant-time comparison)."""
        candidate = _pbkdf2(password, self.salt, self.iterations)
        return hmac.compare_digest(candidate, self.digest)


def new_password() -> str:
    """A random password, safe to put in TOML, a shell variable or a URL-less setting."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def check_username(username: str) -> str:
    """Return ``username`` or raise if Mosquitto's password file cannot hold it."""
    if not username:
        raise PasswordFileError("a user name must not be empty")
    if ":" in username or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in username):
        raise PasswordFileError(
            f"invalid user name {username!r}: no ':', white space or control characters"
        )
    return username


def hash_password(
    username: str,
    password: str,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    salt: bytes | None = None,
) -> PasswordEntry:
    """A password-file entry for ``username`` (a fresh random salt unless one is given)."""
    check_username(username)
    if not password:
        raise PasswordFileError(f"the password of {username!r} must not be empty")
    if iterations < 1:
        raise PasswordFileError(f"iterations must be >= 1, got {iterations}")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    return PasswordEntry(username, iterations, salt, _pbkdf2(password, salt, iterations))


def parse_line(line: str) -> PasswordEntry:
    """Parse one ``user:$7$...`` line; anything else (old ``$6$`` hashes too) is an error."""
    username, sep, rest = line.rstrip("\r\n").partition(":")
    if not sep:
        raise PasswordFileError(f"password line without ':': {line[:40]!r}")
    check_username(username)
    fields = rest.split("$")
    # "$7$101$salt$hash" splits into ["", "7", "101", salt, hash].
    if len(fields) != 5 or fields[0] or fields[1] != PBKDF2_SHA512:
        raise PasswordFileError(f"password of {username!r} is not a $7$ (PBKDF2-SHA512) hash")
    try:
        iterations = int(fields[2])
        salt = base64.b64decode(fields[3], validate=True)
        digest = base64.b64decode(fields[4], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise PasswordFileError(f"malformed $7$ hash for {username!r}: {exc}") from None
    if iterations < 1 or not salt or len(digest) != HASH_BYTES:
        raise PasswordFileError(f"malformed $7$ hash for {username!r}")
    return PasswordEntry(username, iterations, salt, digest)


def parse_file(text: str) -> list[PasswordEntry]:
    """Every entry of a password file; blank lines and ``#`` comments are skipped."""
    entries = [
        parse_line(line) for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    seen: set[str] = set()
    for entry in entries:
        if entry.username in seen:
            raise PasswordFileError(f"user {entry.username!r} appears twice in the password file")
        seen.add(entry.username)
    return entries


def render_file(entries: Iterable[PasswordEntry]) -> str:
    """A whole password file, one line per entry."""
    return "".join(entry.line() + "\n" for entry in entries)


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
