"""`mlflow-operator render -f FILE`: the objects the operator would create, as YAML.

Same code path as the operator (`parse_spec` -> `render_all`), with differences a reader
must know about, all stated in the output's header:
- the generated Secrets (admin password, Flask secret key) are left out, because the
  operator generates them in the cluster, once per MLflowServer. What derives from the
  Flask key (the migration Job's name, the config checksum of the pod template) is
  computed with a fixed preview key, so two runs on the same file print the same bytes
  and a diff shows only what the spec changed. `--include-secrets` generates real values
  (fresh on every run) and prints those Secrets too;
- values the operator reads from the user's Secrets at reconcile time (database URIs)
  are shown as `<from Secret NAME key KEY>`, since this command does not talk to a cluster;
- the owner reference carries a placeholder uid (the API server assigns the real one).

Every problem of the file is reported in one run (`RenderError.problems`), one line each,
with the file name, the line of the document and the path of the field.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlflow_operator import names, secrets
from mlflow_operator.model import DEFAULT_IMAGE, GeneratedSecrets, ServerRef, SpecError, StoreUris, parse_spec
from mlflow_operator.names import API_VERSION, KIND
from mlflow_operator.render import render_all

# A fixed stand-in uid: a real one is assigned by the API server on create.
PREVIEW_UID = "00000000-0000-0000-0000-000000000000"
# Fixed stand-ins for the generated values: they key the migration Job's name and the
# config checksum, which must not change from one run to the next. Never applied: the
# Secrets holding them are left out of the output.
PREVIEW_SECRET_KEY = "mlflow-operator-render-preview-key"
PREVIEW_PASSWORD = "mlflow-operator-render-preview-password"

HEADER = """\
# Rendered by `mlflow-operator render` for {namespace}/{name}.
# A preview to read or diff, not to apply: the operator creates these objects itself
# (its owner reference below has a placeholder uid).
{secrets}# Values the operator reads from your Secrets at reconcile time are shown as placeholders.
"""
STABLE = """\
# Generated Secrets left out (--include-secrets shows them): {omitted}.
# The operator generates them once per MLflowServer and never regenerates them. The
# migration Job name and the config checksum are keyed with the server's secret key in
# the cluster, here with a fixed preview key: they differ from the cluster's, but change
# exactly when the cluster's would.
"""
FRESH = """\
# Generated secret values below are fresh for this preview (--include-secrets): the
# operator generates its own once per MLflowServer, stores them in Secrets and never
# regenerates them.
"""


class RenderError(Exception):
    """Problems found in the file: one line each, all of them."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Document:
    index: int  # 1-based position in the file
    line: int  # 1-based line where the document starts
    body: Any


def load_documents(text: str, filename: str) -> list[Document]:
    """Every YAML document of the file; RenderError with line and column if not YAML."""
    loader = yaml.SafeLoader(text)
    docs: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1 if node is not None else 1
            docs.append(Document(len(docs) + 1, line, loader.construct_document(node)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        problem = ": ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise RenderError([f"{where}: not valid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise RenderError([f"{filename}: not valid YAML ({exc.__class__.__name__})"]) from None
    finally:
        loader.dispose()
    return docs


def _check_object(doc: Document) -> list[str]:
    body = doc.body
    problems = []
    if body.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion must be {API_VERSION}, not {body.get('apiVersion')!r}")
    meta = body.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        problems.append("metadata.name is required")
    elif not all(isinstance(meta.get(k), str) for k in ("name", "namespace") if k in meta):
        problems.append("metadata.name and metadata.namespace must be strings")
    return problems


def _envelope(doc: Document, filename: str) -> tuple[bool, list[str]]:
    """Whether the document is an MLflowServer to render, and the problems of its envelope."""
    where = f"{filename}:{doc.line}: document {doc.index}"
    if doc.body is None:
        return False, []  # an empty document (a trailing `---`)
    if not isinstance(doc.body, Mapping):
        return False, [f"{where}: not a Kubernetes object (a mapping with apiVersion and kind)"]
    if doc.body.get("kind") != KIND:
        return False, []  # other objects of a bundle (Namespaces, Secrets) are not ours to render
    found = _check_object(doc)
    return not found, [f"{where} ({KIND}): {p}" for p in found]


def servers_of(docs: list[Document], filename: str) -> tuple[list[Document], list[str]]:
    """The MLflowServer documents, and the problems of their envelopes (kind, metadata)."""
    servers, problems = [], []
    for doc in docs:
        ok, found = _envelope(doc, filename)
        problems += found
        if ok:
            servers.append(doc)
    return servers, problems


def load_server(text: str) -> Mapping[str, Any]:
    """The one MLflowServer of a text (tests and tools); RenderError otherwise."""
    servers, problems = servers_of(load_documents(text, "<text>"), "<text>")
    if problems or len(servers) != 1:
        raise RenderError(problems or [f"expected exactly one {KIND} object, found {len(servers)}"])
    return servers[0].body


def _generated(spec_has_admin_secret: bool, include_secrets: bool) -> GeneratedSecrets:
    if include_secrets:
        return GeneratedSecrets(
            flask_secret_key=secrets.generate_secret_key(),
            admin_password=None if spec_has_admin_secret else secrets.generate_password())
    return GeneratedSecrets(flask_secret_key=PREVIEW_SECRET_KEY,
                            admin_password=None if spec_has_admin_secret else PREVIEW_PASSWORD)


def _is_generated_secret(obj: Mapping[str, Any]) -> bool:
    annotations = obj["metadata"].get("annotations") or {}
    return obj["kind"] == "Secret" and annotations.get(names.APPLY_POLICY_ANNOTATION) == names.CREATE_ONLY


def render_server(server: Mapping[str, Any], default_image: str = DEFAULT_IMAGE,
                  include_secrets: bool = False) -> list[dict[str, Any]]:
    """Raises SpecError (with every problem of the spec in `.problems`)."""
    meta = server["metadata"]
    ref = ServerRef(name=meta["name"], namespace=meta.get("namespace") or "default",
                    uid=meta.get("uid") or PREVIEW_UID)
    spec = parse_spec(server.get("spec"), default_image)
    stand_ins = {role: f"<from Secret {ref_.name} key {ref_.key}>"
                 for role, ref_ in spec.secret_refs().items()}
    uris = StoreUris(backend_store=stand_ins.get("backendStore"),
                     auth_database=stand_ins.get("authDatabase"))
    generated = _generated(bool(spec.auth.basic_auth.existing_admin_secret), include_secrets)
    objects = render_all(ref, spec, generated, uris)
    if include_secrets:
        return objects
    return [o for o in objects if not _is_generated_secret(o)]


def _render_one(doc: Document, default_image: str, include_secrets: bool) -> str:
    meta = doc.body["metadata"]
    objects = render_server(doc.body, default_image, include_secrets)
    if include_secrets:
        note = FRESH
    else:
        ref = ServerRef(meta["name"], meta.get("namespace") or "default", PREVIEW_UID)
        omitted = [names.secret_key_secret_name(ref)]
        spec = parse_spec(doc.body.get("spec"), default_image)
        if not spec.auth.basic_auth.existing_admin_secret:
            omitted.insert(0, names.admin_secret_name(ref, spec))
        note = STABLE.format(omitted=", ".join(f"Secret {n}" for n in omitted))
    header = HEADER.format(namespace=meta.get("namespace") or "default", name=meta["name"],
                           secrets=note)
    return header + yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)


def render_text(text: str, filename: str, default_image: str = DEFAULT_IMAGE,
                include_secrets: bool = False) -> str:
    """The YAML of every MLflowServer in `text`; RenderError listing every problem."""
    parts, problems, servers = [], [], 0
    for doc in load_documents(text, filename):
        ok, found = _envelope(doc, filename)
        problems += found
        if not ok:
            continue
        servers += 1
        meta = doc.body["metadata"]
        where = f"{filename}:{doc.line}: {KIND} {meta.get('namespace') or 'default'}/{meta['name']}"
        try:
            parts.append(_render_one(doc, default_image, include_secrets))
        except SpecError as exc:
            problems += [f"{where}: {line}" for line in exc.problems]
    if not servers and not problems:
        problems.append(f"{filename}: no {KIND} object (apiVersion {API_VERSION}) in the file")
    if problems:
        raise RenderError(problems)
    return "".join(parts)


def render_file(filename: str, default_image: str = DEFAULT_IMAGE, include_secrets: bool = False) -> str:
    """Raises RenderError (problems of the file) or OSError (the file cannot be read)."""
    if filename == "-":
        return render_text(sys.stdin.read(), "<stdin>", default_image, include_secrets)
    try:
        text = Path(filename).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RenderError([f"{filename}: not a UTF-8 text file"]) from None
    return render_text(text, filename, default_image, include_secrets)
