"""`mlflow-operator` command line: one argparse parser with subcommands.

Adding a subcommand is a function `add_<name>(subparsers)` that registers a parser with
`set_defaults(func=...)`, plus one line in `COMMANDS`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from mlflow_operator.guards import HOST_PATH_FLAG, IMAGES_FLAG, GuardRails, compile_image_pattern
from mlflow_operator.model import DEFAULT_IMAGE, check_image
from mlflow_operator.settings import Options
from mlflow_operator.webhook import options as webhook_options

IMAGE_ENV = "MLFLOW_OPERATOR_DEFAULT_SERVER_IMAGE"


def _image(value: str) -> str:
    try:
        return check_image(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (from the flag or {IMAGE_ENV})") from None


def _add_image_option(p: argparse.ArgumentParser) -> None:
    # argparse runs `type` on a string default too, so a bad variable is reported the same way.
    p.add_argument("--default-server-image", metavar="IMAGE", type=_image,
                   default=os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE,
                   help=f"server image of MLflowServers without spec.image, e.g. a mirror"
                        f" (env {IMAGE_ENV}; default {DEFAULT_IMAGE})")


def _run(args: argparse.Namespace) -> int:
    # Imported here: `render` must work without Kopf's machinery being started.
    from mlflow_operator import runner

    try:
        webhook = webhook_options.from_args(args)
    except ValueError as exc:
        print(f"mlflow-operator run: {exc}", file=sys.stderr)
        return 2
    options = Options(
        namespaces=tuple(args.namespace or ()),
        all_namespaces=args.all_namespaces,
        standalone=args.standalone,
        peering=args.peering,
        liveness=args.liveness,
        resync_seconds=args.resync_seconds,
        watch_timeout_seconds=args.watch_timeout,
        worker_limit=args.worker_limit,
        default_server_image=args.default_server_image,
        webhook=webhook,
        guard_rails=GuardRails(tuple(args.allowed_images or ()), args.allow_host_path),
        metrics_port=args.metrics_port,
    )
    try:
        runner.run(options, log_format=args.log_format, verbose=args.verbose)
    except runner.NoCredentials as exc:
        print(f"mlflow-operator run: {exc}", file=sys.stderr)
        return 2
    return 0


def add_run(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run the operator (watches MLflowServer objects)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="watch this namespace (repeatable). Patterns work too: globs like"
                            " 'team-*', negations like '!team-test'; they need permission to"
                            " list and watch namespaces (and CRDs)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch all namespaces (the default when no --namespace is given)")
    peer = p.add_mutually_exclusive_group()
    peer.add_argument("--standalone", action="store_true",
                      help="do not coordinate with other operator replicas (no peering)")
    peer.add_argument("--peering", metavar="NAME",
                      help="KopfPeering object used to elect one active replica")
    p.add_argument("--liveness", metavar="URL",
                   help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--resync-seconds", type=float, default=60.0,
                   help="reconcile every object this often to repair drift (default 60)")
    p.add_argument("--watch-timeout", type=int, default=300,
                   help="seconds before a watch request is re-opened (default 300)")
    p.add_argument("--worker-limit", type=int, default=20,
                   help="objects reconciled concurrently (default 20)")
    p.add_argument("--log-format", choices=("json", "plain", "full"), default="json",
                   help="log line format (default json)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--metrics-port", type=_port, default=0, metavar="PORT",
                   help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (default: off)")
    _add_image_option(p)
    webhook_options.add_arguments(p)
    _add_guard_options(p)
    p.set_defaults(func=_run)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def _image_pattern(value: str) -> str:
    try:
        compile_image_pattern(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _add_guard_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(IMAGES_FLAG, nargs="+", action="extend", metavar="REGEX", type=_image_pattern,
                   help="spec.image of an MLflowServer must fully match one of these regular"
                        " expressions, else it is Degraded (ImageNotAllowed); repeatable."
                        " Default: any image")
    p.add_argument(HOST_PATH_FLAG, action="store_true",
                   help="let MLflowServers mount hostPath volumes (refused by default:"
                        " Degraded HostPathNotAllowed)")


def _render(args: argparse.Namespace) -> int:
    from mlflow_operator import preview

    try:
        text = preview.render_file(args.filename, args.default_server_image, args.include_secrets)
    except preview.RenderError as exc:
        for problem in exc.problems:
            print(f"mlflow-operator render: {problem}", file=sys.stderr)
        count = len(exc.problems)
        print(f"mlflow-operator render: {count} problem{'s' if count > 1 else ''}, nothing rendered",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mlflow-operator render: cannot read {args.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, not a traceback
        print(f"mlflow-operator render: internal error ({type(exc).__name__}: {exc}); please report it"
              " with the file that caused it", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def add_render(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render", help="print the objects the operator would create for the MLflowServers of a file",
        description="Print the objects the operator would create for every MLflowServer in a"
                    " YAML file. The output is the same on every run for the same input: the"
                    " generated Secrets (admin password, Flask secret key) are left out and"
                    " the values derived from them use a fixed preview key. Exit status 1"
                    " when the file has problems (all are listed), 2 for a usage error.")
    p.add_argument("-f", "--filename", required=True,
                   help="YAML file with one or more MLflowServers ('-' reads standard input)")
    p.add_argument("--include-secrets", action="store_true",
                   help="also print the generated Secrets, with freshly generated values"
                        " (the output then differs on every run)")
    _add_image_option(p)
    p.set_defaults(func=_render)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlflow-operator")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_run, add_render]


def _optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands living in modules that may not exist in every build (e.g. `demo`)."""
    found = []
    try:
        from mlflow_operator import demo  # type: ignore[attr-defined]
    except ImportError:
        return found
    if hasattr(demo, "add_parser"):
        found.append(demo.add_parser)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlflow-operator", description="Kubernetes operator for authenticated MLflow servers")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS + _optional_commands():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
