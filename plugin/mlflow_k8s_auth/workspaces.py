"""Read-only MLflow workspace provider: the workspaces are Kubernetes namespaces.

Registered as the `mlflow.workspace_provider` entry point `k8s-namespaces`; the server runs
with `--enable-workspaces --workspace-store-uri k8s-namespaces://` and `[k8s_auth]
workspaces = namespaces`.

Which namespaces are workspaces:
- those `allowed_namespaces` admits (`*`: all), and, when `workspace_namespace_selector`
  is set, only those carrying matching labels (a Kubernetes label selector, evaluated by
  the API server);
- a namespace being deleted (phase Terminating) is gone at once;
- names MLflow cannot use as a workspace are left out, with one warning each: MLflow
  requires 2-63 characters, so a one-character namespace (`a`) is never a workspace (its
  ServiceAccounts still authenticate; without an `X-MLFLOW-WORKSPACE` header their
  requests go to `default`), and `workspaces`, `api`, `ajax-api`, `static-files` are
  reserved by MLflow.

The workspace `default` always exists: it is MLflow's default workspace, where everything
created before workspaces were turned on lives and where a request without a workspace
header (and without a ServiceAccount namespace that is a workspace) lands. It is one and
the same as the Kubernetes namespace `default`: ServiceAccounts of namespace `default`
work in it, and with `authorization = kubernetes` RBAC in namespace `default` decides.

The set is kept current by a list + watch of namespaces with the server's own credentials
(the RBAC it needs: `list` and `watch` on `namespaces`, cluster-scoped), so a namespace
labelled later appears, and a deleted one disappears, without a restart. Workspaces are
not created, renamed or deleted through MLflow: those calls answer 400.

A namespace's annotation `mlflow.kubeflow.org/workspace-description` (the Kubeflow
provider's) becomes the workspace's description.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from mlflow.entities import Workspace
from mlflow.entities.workspace import WorkspaceDeletionMode
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2
from mlflow.store.workspace.abstract_store import AbstractStore

from .config import K8sAuthConfig, load_config
from .tokenreview import build_api_client

_logger = logging.getLogger(__name__)

SCHEME = "k8s-namespaces"
DEFAULT_WORKSPACE = "default"
DEFAULT_DESCRIPTION = "MLflow's default workspace"
DESCRIPTION_ANNOTATION = "mlflow.kubeflow.org/workspace-description"
# MLflow's WorkspaceNameValidator: 2-63 characters, a DNS label, not reserved.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RESERVED = frozenset({"workspaces", "api", "ajax-api", "static-files"})
READ_ONLY_MESSAGE = (
    "workspaces on this server are Kubernetes namespaces and cannot be {action} through MLflow: "
    "{hint}"
)
INITIAL_SYNC_SECONDS = 15.0
WATCH_SECONDS = 300
RETRY_SECONDS = (0.5, 1, 2, 5, 10)


def usable_name(name: str) -> bool:
    """Whether MLflow accepts `name` as a workspace name (the rules of its validator)."""
    return 2 <= len(name) <= 63 and bool(_NAME.match(name)) and name not in _RESERVED


class NamespaceWatcher:
    """The current workspace namespaces, from one list + watch loop in a daemon thread."""

    def __init__(self, api_factory: Callable[[], k8s.CoreV1Api], allowed: Callable[[str], bool],
                 label_selector: str | None, timeout_seconds: float) -> None:
        self._api_factory = api_factory
        self._allowed = allowed
        self._selector = label_selector or None
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        # name -> description; MLflow's `default` is always there.
        self._names: Mapping[str, str | None] = {DEFAULT_WORKSPACE: DEFAULT_DESCRIPTION}
        self._warned: set[str] = set()
        self.synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> NamespaceWatcher:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="k8s-namespace-workspaces", daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> Mapping[str, str | None]:
        """The current names (read-only: every change replaces the mapping, never edits it)."""
        return self._names

    def wait_synced(self, seconds: float = INITIAL_SYNC_SECONDS) -> bool:
        self.start()
        return self.synced.wait(seconds)

    # ---- the loop ----

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                api = self._api_factory()
                version = self._list(api)
                failures = 0
                self._watch(api, version)
            except Exception as exc:  # the API server away, 410 Gone, RBAC missing: list again
                status = getattr(exc, "status", None)
                if status != 410:
                    delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                    failures += 1
                    _logger.warning("namespace watch for workspaces failed (%s); retrying in %gs",
                                    f"HTTP {status}" if status else type(exc).__name__, delay)
                    self._stop.wait(delay)

    def _list(self, api: k8s.CoreV1Api) -> str:
        answer = api.list_namespace(label_selector=self._selector, _request_timeout=self._timeout)
        names = {DEFAULT_WORKSPACE: DEFAULT_DESCRIPTION}
        for namespace in answer.items:
            entry = self._entry(namespace)
            if entry is not None:
                names[entry[0]] = entry[1]
        with self._lock:
            self._names = names
        if not self.synced.is_set():
            _logger.info("workspaces from Kubernetes namespaces: %d listed%s", len(names),
                         f" (selector {self._selector})" if self._selector else "")
        self.synced.set()
        return answer.metadata.resource_version

    def _watch(self, api: k8s.CoreV1Api, version: str) -> None:
        stream = k8s_watch.Watch().stream(
            api.list_namespace, label_selector=self._selector, resource_version=version,
            timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True, _request_timeout=WATCH_SECONDS + 30,
        )
        for event in stream:
            if self._stop.is_set():
                return
            kind, namespace = event.get("type"), event.get("object")
            if kind == "ERROR" or namespace is None or kind == "BOOKMARK":
                continue
            name = namespace.metadata.name
            entry = None if kind == "DELETED" else self._entry(namespace)
            with self._lock:  # copy on write: readers hold the old mapping, unlocked
                names = dict(self._names)
                if entry is None and name == DEFAULT_WORKSPACE:
                    names[name] = DEFAULT_DESCRIPTION  # the workspace outlives the namespace
                elif entry is None:
                    names.pop(name, None)
                else:
                    names[entry[0]] = entry[1]
                self._names = names

    def _entry(self, namespace: Any) -> tuple[str, str | None] | None:
        name = namespace.metadata.name
        if not self._allowed(name):
            return None
        if getattr(namespace.status, "phase", None) == "Terminating":
            return None
        if not usable_name(name):
            if name not in self._warned:
                self._warned.add(name)
                _logger.warning("namespace %r cannot be an MLflow workspace (MLflow needs 2-63 characters, "
                                "a DNS label, not one of %s); it is left out", name, ", ".join(sorted(_RESERVED)))
            return None
        annotations = namespace.metadata.annotations or {}
        fallback = DEFAULT_DESCRIPTION if name == DEFAULT_WORKSPACE else None
        return name, annotations.get(DESCRIPTION_ANNOTATION) or fallback


def _read_only(action: str, hint: str) -> MlflowException:
    return MlflowException(READ_ONLY_MESSAGE.format(action=action, hint=hint), databricks_pb2.INVALID_PARAMETER_VALUE)


class NamespaceWorkspaceStore(AbstractStore):
    """MLflow's workspace store interface over `NamespaceWatcher` (see the module doc)."""

    def __init__(self, watcher: NamespaceWatcher, selector: str | None = None) -> None:
        self._watcher = watcher
        self._selector = selector

    def start(self) -> None:
        self._watcher.start()

    def names(self) -> Mapping[str, str | None]:
        """Current workspaces (name -> description); `default` included. Waits for the first
        list once; 503 if the API server has not answered it."""
        if not self._watcher.wait_synced():
            raise MlflowException("the list of workspaces (Kubernetes namespaces) is not available yet, retry shortly",
                                  databricks_pb2.TEMPORARILY_UNAVAILABLE)
        return self._watcher.snapshot()

    def synced(self) -> bool:
        return self._watcher.synced.is_set()

    def wait_synced(self) -> bool:
        return self._watcher.wait_synced()

    def has(self, name: str) -> bool:
        """Without waiting: whether `name` is a workspace right now (only `default` before the
        first list)."""
        return name in self._watcher.snapshot()

    def list_workspaces(self) -> Iterable[Workspace]:
        return [Workspace(name=name, description=text) for name, text in sorted(self.names().items())]

    def get_workspace(self, workspace_name: str) -> Workspace:
        names = self.names()
        if workspace_name not in names:
            raise MlflowException(
                f"workspace {workspace_name!r} does not exist: workspaces are the Kubernetes namespaces "
                f"this server allows{self._selector_hint()}",
                databricks_pb2.RESOURCE_DOES_NOT_EXIST,
            )
        return Workspace(name=workspace_name, description=names[workspace_name])

    def get_default_workspace(self) -> Workspace:
        return Workspace(name=DEFAULT_WORKSPACE, description=DEFAULT_DESCRIPTION)

    def create_workspace(self, workspace: Workspace) -> Workspace:
        raise _read_only("created", f"create the namespace{self._selector_hint()} instead")

    def update_workspace(self, workspace: Workspace) -> Workspace:
        raise _read_only("updated", f"annotate the namespace with {DESCRIPTION_ANNOTATION} to describe it")

    def delete_workspace(self, workspace_name: str,
                         mode: WorkspaceDeletionMode = WorkspaceDeletionMode.RESTRICT) -> None:
        raise _read_only("deleted", "delete the namespace (or remove it from the server's allowed namespaces)")

    def _selector_hint(self) -> str:
        return f" (labelled {self._selector})" if self._selector else ""


def store_for(config: K8sAuthConfig) -> NamespaceWorkspaceStore:
    watcher = NamespaceWatcher(
        lambda: k8s.CoreV1Api(build_api_client(config.kubeconfig)),
        config.namespace_allowed, config.workspace_namespace_selector, config.tokenreview_timeout_seconds,
    )
    return NamespaceWorkspaceStore(watcher, config.workspace_namespace_selector)


def build_store(workspace_uri: str | None = None) -> NamespaceWorkspaceStore:
    """The `mlflow.workspace_provider` builder: configured by the plugin's ini."""
    path = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    if not path:
        raise MlflowException(f"the {SCHEME} workspace provider reads [k8s_auth] from MLFLOW_AUTH_CONFIG_PATH, "
                              "which is not set", databricks_pb2.INVALID_STATE)
    return store_for(load_config(path))
