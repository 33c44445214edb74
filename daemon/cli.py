"""The ``replicad`` command line: a thin layer over the engine.

Every expected failure ends as one line on stderr and a contract exit code; stdout
carries command output only (``status --json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import anyio

from replicad.daemon import exits
from replicad.daemon.config import Config, ConfigError, default_config_path, load_config
from replicad.daemon.logs import configure, redact
from replicad.store import as_corruption

Command = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (what is wrong, where to look), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(exits.USAGE, f"replicad: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = _Parser(
        prog="replicad",
        description="Mirror a remote account into a local SQLite replica and keep it in sync.",
    )
    parser.add_argument("--version", action="version", version=f"replicad {_version()}")
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default)")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def with_config(p: argparse.ArgumentParser, *, nested: bool = False) -> argparse.ArgumentParser:
        # A nested action's own default would overwrite a --config given before it
        # (`conflicts --config F resolve …`), and the command would act on another
        # replica: it sets the option only when given.
        default = argparse.SUPPRESS if nested else None
        p.add_argument("--config", type=Path, default=default, help="config file (TOML)")
        return p

    p = with_config(sub.add_parser("sync", help="run one full cycle of every sync, then exit"))
    p.add_argument("--once", action="store_true", help="one cycle, then exit (the default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sync)

    p = with_config(sub.add_parser("run", help="the long-running daemon"))
    p.set_defaults(func=cmd_run)

    p = with_config(sub.add_parser("status", help="per-sync state, read from the replica"))
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("retry", help="requeue rejected local edits"))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every rejected entry")
    which.add_argument("entry", nargs="?", type=int, help="an entry of replicad_outbox")
    p.set_defaults(func=cmd_retry)

    p = with_config(sub.add_parser("resync", help="pull everything again (pull syncs)"))
    p.add_argument("syncs", nargs="*", metavar="SYNC", help="pull syncs (default: all)")
    p.set_defaults(func=cmd_resync)

    p = with_config(sub.add_parser("backup", help="a consistent online copy of the replica"))
    p.add_argument("path", type=Path, metavar="PATH", help="a new file")
    p.set_defaults(func=cmd_backup)

    p = with_config(sub.add_parser("doctor", help="check the replica (and repair it)"))
    p.add_argument("--repair", action="store_true", help="rebuild what can be rebuilt")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=cmd_doctor)

    p = with_config(sub.add_parser("conflicts", help="list or resolve the conflict journal"))
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--all", action="store_true", help="closed entries too")
    csub = p.add_subparsers(dest="conflicts_action", metavar="ACTION", parser_class=_Parser)
    r = with_config(csub.add_parser("resolve", help="close entries keeping one side"), nested=True)
    r.add_argument("ids", nargs="+", type=int, metavar="ID")
    r.add_argument("--keep", required=True, choices=("local", "remote"))
    p.set_defaults(func=cmd_conflicts)

    p = with_config(
        sub.add_parser("validate", help="check the config, credentials and sources; change nothing")
    )
    p.add_argument("--json", action="store_true", help="answer in Census's {status, data} shape")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("emulator", help="serve the built-in emulator on 127.0.0.1")
    p.add_argument("--port", type=int, default=8899, help="0 picks a free port")
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--page-size", type=int, default=100)
    p.add_argument(
        "--profile",
        choices=("standard", "variant"),
        default="standard",
        help="variant: answer in the other legal ways (docs/push-wire.md)",
    )
    p.add_argument(
        "--latency",
        default="0s",
        help="wait this long before answering each API request, as a network would "
        '(e.g. "50ms"; default 0s)',
    )
    p.set_defaults(func=cmd_emulator)

    p = sub.add_parser("demo", help="a self-contained demo against the built-in emulator")
    p.add_argument("--dir", type=Path, default=Path("replicad-demo"))
    p.add_argument("--records", type=int, default=3000)
    p.add_argument(
        "--force", action="store_true", help="start over even in a folder with someone's work"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "service", help="the systemd unit (Linux) or launchd agent (macOS) for this install"
    )
    p.add_argument("action", choices=("install", "uninstall", "print"))
    p.add_argument("--user", action="store_true", help="the user unit (usual on a workstation)")
    p.set_defaults(func=cmd_service)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: run one command; returns its exit code (the console script is entry())."""
    args = build_parser().parse_args(argv)
    default_level = "info" if args.command == "run" else "warning"
    level = args.log_level or os.environ.get("REPLICAD_LOG_LEVEL") or default_level
    if level.lower() not in _LEVELS:
        where = "--log-level" if args.log_level else "REPLICAD_LOG_LEVEL"
        print(f"replicad: {where}: {level!r} is not one of {', '.join(_LEVELS)}", file=sys.stderr)
        return exits.USAGE
    configure(_shifted(level, args.verbose - args.quiet))
    func: Command = args.func
    try:
        return func(args)
    except BaseException as raw:
        error = exits.unwrap(raw)
        error = as_corruption(error) or error
        if isinstance(error, SystemExit):
            raise error from None
        if isinstance(error, KeyboardInterrupt):
            print("replicad: interrupted", file=sys.stderr)
            return 130
        if isinstance(error, BrokenPipeError):
            # The reader of our output went away (`replicad status | head`): nothing
            # failed that the user needs to hear about.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the flush at exit
            return exits.OK
        if args.debug:
            import traceback

            traceback.print_exception(error)
        code = exits.exit_code(error)
        message = redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
        if code == exits.FAILURE and not exits.expected(error):
            message = f"{type(error).__name__}: {message} (run with --debug for a traceback)"
        print(f"replicad: {message}", file=sys.stderr)
        return code


def entry() -> None:
    """The console script: ``main()``, then a quick exit.

    Tearing down the interpreter (dozens of imported modules) takes about 45 ms, as
    long as a small sync. When ``main`` has returned, the replica is closed and
    nothing is left to finish, so the process ends at once after flushing its output,
    unless a thread other than daemon threads still runs (then Python's own exit
    waits for it as usual).
    """
    code = main()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(not t.daemon for t in others):
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_LEVELS = ("debug", "info", "warning", "error", "critical")


def _shifted(level: str, by: int) -> str:
    """A log level ``by`` steps more verbose (-v) or quieter (-q); unknown names pass
    through (``configure`` refuses them)."""
    if level.lower() not in _LEVELS or not by:
        return level
    i = _LEVELS.index(level.lower()) - by
    return _LEVELS[max(0, min(len(_LEVELS) - 1, i))]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("replicad")
    except PackageNotFoundError:
        return "unknown"


def _config(args: argparse.Namespace) -> Config:
    path = args.config or default_config_path()
    return load_config(path)


def cmd_sync(args: argparse.Namespace) -> int:
    """One cycle of every non-paused sync; exit code of the first failure."""
    from replicad.daemon.oneshot import sync_once

    config = _config(args)
    show = sys.stderr.isatty() and not args.no_progress
    return anyio.run(sync_once, config, show)


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon; returns 0 after SIGTERM/SIGINT."""
    from replicad.daemon.run import run_daemon

    anyio.run(run_daemon, _config(args))
    return exits.OK


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status of every sync; exit 1 while one is failing or alerting."""
    from replicad.daemon.status_view import render_status, status_report

    report = status_report(_config(args))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_status(report))
    # Scripts and monitors read the exit code: 1 while a sync is failing or one of
    # its alerts is open (CONTRACT §2).
    failing = [s["sync"] for s in report["syncs"] if s.get("state") == "failing" or s.get("alerts")]
    return exits.FAILURE if failing else exits.OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Requeue rejected outbox entries; the next push sends them again."""
    from replicad.daemon.retry_cmd import retry_rejected

    return retry_rejected(_config(args), None if args.all else args.entry)


def cmd_resync(args: argparse.Namespace) -> int:
    """Start a full pull of pull syncs."""
    from replicad.daemon.operate_cmd import resync

    return resync(_config(args), args.syncs)


def cmd_backup(args: argparse.Namespace) -> int:
    """Copy the replica consistently, online."""
    from replicad.daemon.operate_cmd import backup_cmd

    return backup_cmd(_config(args), args.path)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check (and repair) the replica."""
    from replicad.daemon.operate_cmd import doctor

    return doctor(_config(args), args.repair, args.json)


def cmd_conflicts(args: argparse.Namespace) -> int:
    """List the conflict journal, or resolve entries."""
    from replicad.daemon.operate_cmd import conflicts_cmd, resolve_cmd

    if args.conflicts_action == "resolve":
        return resolve_cmd(_config(args), args.ids, args.keep)
    return conflicts_cmd(_config(args), args.json, args.all)


def cmd_validate(args: argparse.Namespace) -> int:
    """Check the config, tokens and (when reachable) credentials; change nothing."""
    from replicad.daemon.validate import validate

    if not args.json:
        return anyio.run(validate, _config(args), False)
    try:
        config = _config(args)
    except ConfigError as e:
        json.dump({"status": "error", "data": {"error": str(e)}}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return exits.USAGE
    return anyio.run(validate, config, True)


def cmd_emulator(args: argparse.Namespace) -> int:
    """Serve the emulator until interrupted."""
    from replicad.connectors.emulator.server import serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: {args.port} is not a port number")
    from replicad.daemon.durations import parse_duration

    try:
        latency = parse_duration(args.latency)
    except ValueError as e:
        raise ConfigError(f"--latency: {e}") from None
    serve(
        port=args.port,
        records=args.records,
        seed=args.seed,
        token=os.environ.get("REPLICAD_EMULATOR_TOKEN") or None,
        page_size=args.page_size,
        profile=args.profile,
        latency=latency,
    )
    return exits.OK


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo: emulator, config, replica, sync, remote changes, sync, queries."""
    from replicad.daemon.demo import run_demo

    return run_demo(args.dir, args.records, args.force)


def cmd_service(args: argparse.Namespace) -> int:
    """Install, uninstall or print the service unit (launchd agent) for this install."""
    from replicad.daemon.service import service

    return service(args.action, user=args.user)


if __name__ == "__main__":
    raise SystemExit(main())
