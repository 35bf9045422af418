"""Database URIs as their authors meant them: user and password percent-encoded.

SQLAlchemy's URL parser ends the password at its *first* `@`: `postgresql://u:p@ss@db/x`
becomes password `p`, host `ss@db`. The connection then fails, and every error text
(MLflow's own backend-store checks run before any plugin loads, the migration Job's log)
quotes the host `ss@db`, a piece of the password, which SQLAlchemy's masking cannot know.
`normalize` removes the cause: it writes the userinfo the way SQLAlchemy reads it back as
the author meant.

The rules (the same ones `redact.password_of` uses to find a password):

- the userinfo ends at the URI's LAST `@` (a raw `@` may stand in the user or the
  password, never after the host: write `%40` in a database name or query value);
- the user ends at the userinfo's first `:`; everything after it is the password (raw
  `:`, `/`, `#`, `?` included);
- user and password are percent-encoded, except RFC 3986's unreserved and sub-delimiter
  characters, which SQLAlchemy reads as they are;
- a `%` followed by two hex digits is an escape the author already wrote (`p%40ss` means
  `p@ss`) and stays as is, so normalizing twice changes nothing; any other `%` is a
  literal percent sign and becomes `%25`. A password holding a literal `%` followed by
  two hex digits (`50%41`) must therefore be written encoded (`50%2541`), as SQLAlchemy
  itself requires.

Host, port (IPv6 `[...]` included), database and query are left exactly as written;
URIs without userinfo (`sqlite:///...`, `file:...`, `postgresql://db/x`) are unchanged.
Imports nothing but the standard library: the operator uses it too.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# Left as they are in userinfo (RFC 3986 unreserved minus alphanumerics, plus sub-delims);
# SQLAlchemy's unquote leaves them alone too.
_SAFE = "-._~!$&'()*+,;="
_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")


def _encode(part: str) -> str:
    """Percent-encode `part`, keeping escapes already written (`%40`) as they are."""
    return "".join(piece if _ESCAPE.fullmatch(piece) else quote(piece, safe=_SAFE)
                   for piece in _ESCAPE.split(part) if piece)


def normalize(uri: str) -> str:
    """`uri` with its user and password percent-encoded (see the module's rules)."""
    scheme, sep, rest = uri.partition("://")
    at = rest.rfind("@")
    # No `scheme://`, no userinfo, or an empty authority (`sqlite:////data/a@b.db`: the
    # `@` is in a path).
    if not sep or at < 0 or rest.startswith("/"):
        return uri
    userinfo, host_and_rest = rest[:at], rest[at + 1:]
    user, colon, password = userinfo.partition(":")
    return f"{scheme}://{_encode(user)}{colon}{_encode(password)}@{host_and_rest}"
