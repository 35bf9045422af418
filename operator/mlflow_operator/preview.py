"""`mlflow-operator render -f FILE`: the objects the operator would create, as YAML.

Same code path as the operator (`parse_spec` -> `render_all`), with two differences a
reader must know about, both stated in the output's header:
- generated secrets (admin password, Flask secret key) are freshly generated here; the
  operator generates them once per MLflowServer and never regenerates them;
- values the operator reads from the user's Secrets at reconcile time (database URIs)
  are shown as `<from Secret NAME key KEY>`, since this command does not talk to a cluster.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mlflow_operator import secrets
from mlflow_operator.model import DEFAULT_IMAGE, GeneratedSecrets, ServerRef, StoreUris, parse_spec
from mlflow_operator.names import API_VERSION, KIND
from mlflow_operator.render import render_all

# A fixed stand-in uid: a real one is assigned by the API server on create.
PREVIEW_UID = "00000000-0000-0000-0000-000000000000"

HEADER = """\
# Rendered by `mlflow-operator render` for {namespace}/{name}.
# Generated secret values below are fresh for this preview: the operator generates them
# once per MLflowServer, stores them in Secrets and never regenerates them.
# Values the operator reads from your Secrets at reconcile time are shown as placeholders.
"""


def load_server(text: str) -> Mapping[str, Any]:
    docs = [d for d in yaml.safe_load_all(text) if d]
    servers = [d for d in docs if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(servers) != 1:
        raise ValueError(f"expected exactly one {KIND} object in the file, found {len(servers)}")
    server = servers[0]
    if server.get("apiVersion") != API_VERSION:
        raise ValueError(f"apiVersion must be {API_VERSION}, not {server.get('apiVersion')!r}")
    if not (server.get("metadata") or {}).get("name"):
        raise ValueError("metadata.name is required")
    return server


def render_server(server: Mapping[str, Any], default_image: str = DEFAULT_IMAGE) -> list[dict[str, Any]]:
    meta = server["metadata"]
    ref = ServerRef(name=meta["name"], namespace=meta.get("namespace") or "default",
                    uid=meta.get("uid") or PREVIEW_UID)
    spec = parse_spec(server.get("spec"), default_image)
    stand_ins = {role: f"<from Secret {ref_.name} key {ref_.key}>"
                 for role, ref_ in spec.secret_refs().items()}
    uris = StoreUris(backend_store=stand_ins.get("backendStore"),
                     auth_database=stand_ins.get("authDatabase"))
    generated = GeneratedSecrets(
        flask_secret_key=secrets.generate_secret_key(),
        admin_password=None if spec.auth.basic_auth.existing_admin_secret else secrets.generate_password())
    return render_all(ref, spec, generated, uris)


def render_file(filename: str, default_image: str = DEFAULT_IMAGE) -> str:
    text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
    try:
        server = load_server(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{filename}: not valid YAML ({exc.__class__.__name__})") from None
    objects = render_server(server, default_image)
    meta = server["metadata"]
    header = HEADER.format(namespace=meta.get("namespace") or "default", name=meta["name"])
    return header + yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)
