"""Keep database passwords out of every error text, however oddly the URI is written.

A password may hold characters that end the userinfo part of a URI: a raw `@`, `:`, `/`,
`#`, `?` (or their `%XX` forms, which drivers decode). Parsers then split the URI at the
wrong place and their errors quote a *piece* of the password, e.g. SQLAlchemy reads
`postgresql://u:p@ss@db/x` as password `p`, host `ss@db`, and psycopg answers
`could not translate host name "ss@db"`. A pattern alone cannot find such a piece, so
`redact` works from the URIs the process was given (the auth ini, the command line, the
environment) and removes, for each of them:

- the password, raw and percent-decoded;
- every tail of it that starts after one of those characters, wherever it is followed by
  `@` (how a mis-split tail shows: as part of a host, a path or a database name);
- every piece of it between those characters, where it stands alone (a host `'Qx2'`);
- then, for any URI left in the text, everything between `user:` and the last `@` of it.

Over-redaction (a host name cut) is accepted; a shown password piece is not.

`install_log_redaction` applies the same to every log record the process makes from then
on (MLflow's engine retry warnings quote the driver's error, uvicorn logs a worker's failed
start with its traceback). What MLflow prints before it loads the plugin (its own backend
store checks in the `mlflow server` command) is out of the plugin's reach.
"""

from __future__ import annotations

import configparser
import logging
import os
import threading
import re
import sys
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

MASK = "***"
# Characters that end a URI's userinfo or split it for some parser.
_SPLITTERS = "@:/#?%"
# scheme://user:<anything without blanks or quotes, greedy to the last @>@
_URI_WITH_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)[^\s'\"]*@")
_ALONE = r"(?<![A-Za-z0-9])"
_AUTH_INI_KEYS = ("database_uri", "read_database_uri")


def password_of(uri: str) -> str | None:
    """The userinfo's password as written: from the first `:` after `scheme://user` to the
    URI's last `@` (a raw `@` in the password would fool any first-`@` rule)."""
    scheme_end = uri.find("://")
    at = uri.rfind("@")
    if scheme_end < 0 or at < scheme_end:
        return None
    userinfo = uri[scheme_end + 3:at]
    colon = userinfo.find(":")
    return userinfo[colon + 1:] if colon >= 0 and colon + 1 < len(userinfo) else None


def secret_patterns(uris: Iterable[str]) -> list[re.Pattern[str]]:
    """What to mask for `uris`, longest first (so a piece never masks half a longer one)."""
    items = {item for uri in uris for item in _secret_items(uri)}
    return [pattern for _, pattern in sorted(items, key=lambda item: item[0], reverse=True)]


def _secret_items(uri: str) -> list[tuple[int, re.Pattern[str]]]:
    password = password_of(uri)
    if not password:
        return []
    wholes = {password, unquote(password), unquote_plus(password)}
    exact = set(wholes)
    pieces: set[str] = set()
    for whole in wholes:
        exact.update(whole[i + 1:] + "@" for i, char in enumerate(whole) if char in _SPLITTERS and whole[i + 1:])
        pieces.update(p for p in re.split(f"[{re.escape(_SPLITTERS)}]", whole) if p)
    # Masked only where no letter or digit touches them, so `ss` does not eat `class`; a
    # piece stands alone where a parser cut the password at a splitter (`host 'Qx2'`).
    patterns = [(len(f), re.compile(rf"{_ALONE}{re.escape(f)}")) for f in exact if f.endswith("@") and f.strip("@")]
    patterns += [(len(p), re.compile(rf"{_ALONE}{re.escape(p)}(?![A-Za-z0-9])"))
                 for p in pieces | {f for f in exact if not f.endswith("@")}]
    return patterns


def redact(text: str, uris: Iterable[str] | None = None) -> str:
    """`text` without any password of `uris` (default: every URI this process was given)."""
    return _apply(secret_patterns(known_uris() if uris is None else uris), text)


def _apply(patterns: list[re.Pattern[str]], text: str) -> str:
    for pattern in patterns:
        text = pattern.sub(lambda m: MASK + "@" if m.group(0).endswith("@") else MASK, text)
    return _URI_WITH_PASSWORD.sub(rf"\1{MASK}@", text)


_installed = threading.Lock()
_factory_installed = False


def install_log_redaction() -> None:
    """Redact every log record made from now on, whichever logger or handler it goes to
    (a record factory, not a handler filter: handlers made later are covered too)."""
    global _factory_installed
    with _installed:
        if _factory_installed:
            return
        patterns = secret_patterns(known_uris())
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _scrub(record, patterns)
            return record

        logging.setLogRecordFactory(redacting_factory)
        _factory_installed = True


def _scrub(record: logging.LogRecord, patterns: list[re.Pattern[str]]) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: let the handler report it as usual
        return
    clean = _apply(patterns, message)
    if clean != message:  # records left alone keep their args (uvicorn's access log reads them)
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        clean = _apply(patterns, text)
        if clean != text:  # formatters print exc_text when exc_info is gone: the redacted one
            record.exc_text, record.exc_info = clean, None


def known_uris() -> list[str]:
    """URIs with a password that this process holds: the auth ini's database URIs, command
    line arguments (`--backend-store-uri ...`) and environment values (MLflow hands the
    store URIs to its workers in the environment)."""
    candidates = [*sys.argv, *os.environ.values(), *_auth_ini_uris()]
    found: list[str] = []
    for value in candidates:
        for piece in _with_option_prefix_removed(value):
            if password_of(piece) and piece not in found:
                found.append(piece)
    return found


def _with_option_prefix_removed(value: str) -> list[str]:
    # `--backend-store-uri=postgresql://...` as well as the URI itself.
    return [value, value.split("=", 1)[1]] if value.startswith("--") and "=" in value else [value]


def _auth_ini_uris() -> list[str]:
    path = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    if not path:
        return []
    uris: list[str] = []
    for interpolation in (None, configparser.BasicInterpolation()):
        # Raw (as written, `%%` doubled) and as MLflow reads it (`%%` -> `%`).
        parser = configparser.ConfigParser(interpolation=interpolation)
        try:
            parser.read(path)
            uris.extend(parser.get("mlflow", key) for key in _AUTH_INI_KEYS if parser.has_option("mlflow", key))
        except (configparser.Error, OSError, UnicodeError):
            continue
    return uris
