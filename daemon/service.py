"""``replicad service install|uninstall|print [--user]``: the service for this install.

On Linux it is a systemd unit: ``--user`` selects the user unit (the usual choice on a
workstation: the daemon runs as you, and your apps read the replica it keeps), without
it the hardened system unit that runs as the dedicated user ``replicad``. On macOS it
is a launchd agent of the current user.

The templates are the files in ``systemd/`` of the source tree; a wheel installs them
as data files under ``<prefix>/share/replicad/systemd``. Rendering rewrites only what
depends on this install: the unit's ``ExecStart`` (the agent's ``ProgramArguments`` and
log paths), which becomes the absolute path of the ``replicad`` that runs this command,
so the service runs exactly the install that installed it.

Every change is first laid out as a plan (files to write or remove, commands to run).
With ``REPLICAD_SERVICE_DRY_RUN=1``, or when ``systemctl``/``launchctl`` is missing or
systemd is not running, the plan is printed and nothing is changed.
"""

from __future__ import annotations

import importlib.metadata
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import platformdirs

from replicad.daemon import exits

Kind = Literal["system", "user", "launchd"]
ACTIONS = ("install", "uninstall", "print")

UNIT_NAME = "replicad.service"
LABEL = "io.replicad.replicad"
DRY_RUN_ENV = "REPLICAD_SERVICE_DRY_RUN"
# Template files, relative to the template directory.
TEMPLATES: dict[Kind, str] = {
    "system": "replicad.service",
    "user": "user/replicad.service",
    "launchd": f"{LABEL}.plist",
}
SYSTEM_UNIT = Path("/etc/systemd/system") / UNIT_NAME
SYSTEM_CONFIG = Path("/etc/replicad/config.toml")
SYSUSERS_FILE = Path("/etc/sysusers.d/replicad.conf")
# systemd-sysusers creates the user and its group of the same name when missing, and
# leaves them alone when they exist: installing twice changes nothing.
SYSUSERS_LINE = 'u replicad - "replicad sync daemon" /var/lib/replicad\n'
# ProtectHome=yes makes these invisible to the system service.
PROTECTED_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
# The ExecStart line of a unit template: the executable is the only thing rendered.
_EXEC_START = re.compile(r"^ExecStart=(\S+) run$", re.MULTILINE)
# Characters that need no quoting in a word of an Exec*= command line.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9/._+@:,=-]+")


class ServiceError(Exception):
    """A service command failed; the message says what to do. ``code``: the exit code."""

    def __init__(self, message: str, code: int = exits.FAILURE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class MakeDir:
    """Create a directory (and its parents)."""

    path: Path


@dataclass(frozen=True, slots=True)
class Write:
    """Write a file atomically."""

    path: Path
    content: str
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class Remove:
    """Remove a file."""

    path: Path


@dataclass(frozen=True, slots=True)
class Run:
    """Run a command; ``check=False`` tolerates its failure (e.g. stopping a stopped job)."""

    argv: tuple[str, ...]
    check: bool = True


Step = MakeDir | Write | Remove | Run


@dataclass(frozen=True, slots=True)
class Plan:
    """What a service command does, in order, and what to tell the user afterwards."""

    kind: Kind
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()


# -- locating things ------------------------------------------------------------------


def kind_for(platform: str, user: bool) -> Kind:
    """The kind of service this platform uses."""
    if platform == "darwin":
        return "launchd"  # a per-user agent either way: --user changes nothing
    if platform.startswith("linux"):
        return "user" if user else "system"
    raise ServiceError(
        f"replicad service supports systemd (Linux) and launchd (macOS), not {platform}; "
        "run `replicad run` under your own supervisor",
        exits.USAGE,
    )


def find_executable() -> Path:
    """The ``replicad`` console script of the running install, as an absolute path.

    The script beside the running interpreter comes first: that is the install running
    this command (a venv, pipx), even when another replicad is earlier on PATH.
    Symlinked directories are kept as they are (``os.path.abspath``, not ``resolve``),
    so a unit naming ``/opt/replicad/current/bin/replicad`` follows that link when it
    is switched to a new version.
    """
    candidates = [Path(sys.executable).parent / "replicad"]
    on_path = shutil.which("replicad")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return Path(os.path.abspath(candidate))
    raise ServiceError(
        f"cannot find the replicad console script (looked beside {sys.executable} and on "
        "PATH); install replicad with pip or pipx first"
    )


def template_dir() -> Path:
    """The directory holding the unit templates.

    A source checkout (and an editable install of it) has them in ``systemd/`` next to
    this package; an installed wheel has them among its data files, which
    ``importlib.metadata`` lists whatever the install scheme (venv, ``--user``, prefix).
    """
    checkout = Path(__file__).resolve().parent.parent / "systemd"
    if all((checkout / name).is_file() for name in TEMPLATES.values()):
        return checkout
    try:
        dist = importlib.metadata.distribution("replicad")
        files = dist.files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.parts[-4:] == ("share", "replicad", "systemd", TEMPLATES["system"]):
            return Path(str(file.locate())).resolve().parent
    raise ServiceError(
        "the unit templates are missing from this install (expected systemd/ in a checkout "
        "or share/replicad/systemd in the environment); reinstall replicad"
    )


def user_unit_path() -> Path:
    """Where systemd looks for the user's own units: ``$XDG_CONFIG_HOME/systemd/user``."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "systemd" / "user" / UNIT_NAME


def agent_path() -> Path:
    """The launchd agent's plist: ``~/Library/LaunchAgents/<label>.plist``."""
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def agent_log() -> Path:
    """The agent's log file (stdout and stderr)."""
    return Path.home() / "Library" / "Logs" / "replicad" / "replicad.log"


def service_config(kind: Kind) -> Path:
    """The config file the service reads (the service does not see $REPLICAD_CONFIG)."""
    if kind == "system":
        return SYSTEM_CONFIG  # Environment=REPLICAD_CONFIG= in the system unit
    return Path(platformdirs.user_config_dir("replicad")) / "config.toml"


# -- rendering ------------------------------------------------------------------------


def exec_word(value: str) -> str:
    """The executable of an ``Exec*=`` line, escaped for systemd.

    ``%`` starts a specifier everywhere on the line, so it is doubled. ``$`` is left
    alone: variables are expanded in the arguments only, never in the executable's path
    (there ``$$`` would stay two dollars). A path with a space is double-quoted. systemd
    refuses quotes, backslashes and control characters in an executable's path however
    they are escaped, so such a path is an error here rather than a broken unit.
    """
    if any(c in "\"'\\" or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ServiceError(
            f"{value!r}: systemd refuses quotes, backslashes and control characters in the "
            "path of a service's executable; install replicad under a plainer path",
            exits.USAGE,
        )
    if _PLAIN_WORD.fullmatch(value):
        return value
    return '"' + value.replace("%", "%%") + '"'


def render_unit(template: str, executable: Path) -> str:
    """A unit template with ``ExecStart=<executable> run``."""

    def exec_start(_match: re.Match[str]) -> str:
        return f"ExecStart={exec_word(str(executable))} run"

    rendered, count = _EXEC_START.subn(exec_start, template)
    if count != 1:
        raise ServiceError("the unit template has no single 'ExecStart=... run' line")
    return rendered


def render_plist(template: bytes, executable: Path, log: Path) -> str:
    """The launchd agent with absolute paths (launchd expands neither ~ nor $HOME)."""
    agent = plistlib.loads(template)
    if not isinstance(agent, dict) or agent.get("Label") != LABEL:
        raise ServiceError(f"the launchd template is not the agent {LABEL}")
    agent["ProgramArguments"] = [str(executable), "run"]
    agent["StandardOutPath"] = agent["StandardErrorPath"] = str(log)
    return plistlib.dumps(agent, sort_keys=False).decode("utf-8")


def render(kind: Kind, executable: Path, templates: Path | None = None) -> str:
    """The unit (or agent) of this kind for an executable."""
    path = (templates or template_dir()) / TEMPLATES[kind]
    try:
        if kind == "launchd":
            return render_plist(path.read_bytes(), executable, agent_log())
        return render_unit(path.read_text(encoding="utf-8"), executable)
    except OSError as e:
        raise ServiceError(f"cannot read the template {path}: {e.strerror}") from None


def protected_home_paths(executable: Path) -> list[Path]:
    """The paths the system service needs that ProtectHome=yes hides (empty: none).

    Both the console script and its interpreter count: a script in /opt whose ``#!``
    names a Python under /home (pyenv, a venv's symlink) does not run either.
    """
    paths = [executable, executable.resolve()]
    try:
        with executable.open("rb") as f:
            first = f.readline(4096)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if words and words[0] != "/usr/bin/env":
            interpreter = Path(words[0])
            paths += [interpreter, interpreter.resolve()]
    return [p for p in paths if any(p.is_relative_to(home) for home in PROTECTED_HOMES)]


# -- planning -------------------------------------------------------------------------


def _systemctl(kind: Kind, *args: str) -> Run:
    scope = ("--user",) if kind == "user" else ()
    return Run(("systemctl", *scope, *args))


def plan_install(kind: Kind, executable: Path, content: str) -> Plan:
    """The steps that install and start the rendered unit (or agent) ``content``."""
    config = service_config(kind)
    has_config = config.is_file()
    if kind == "launchd":
        return _plan_install_agent(content, config, has_config)
    target = SYSTEM_UNIT if kind == "system" else user_unit_path()
    steps: list[Step] = []
    if kind == "system" and not SYSUSERS_FILE.exists():  # an admin's own version wins
        steps += [MakeDir(SYSUSERS_FILE.parent), Write(SYSUSERS_FILE, SYSUSERS_LINE)]
    if kind == "system":
        steps.append(Run(("systemd-sysusers", str(SYSUSERS_FILE))))
    steps += [MakeDir(target.parent), Write(target, content), _systemctl(kind, "daemon-reload")]
    scope = "--user " if kind == "user" else ""
    notes: list[str] = []
    if has_config:
        steps.append(_systemctl(kind, "enable", "--now", UNIT_NAME))
        if _differs(target, content):
            # enable --now leaves a running service alone: restart it onto the new unit.
            steps.append(_systemctl(kind, "try-restart", UNIT_NAME))
    else:
        # Started now, it would only fail on the missing config (exit 2, not restarted):
        # enable it, and say how to start it once the config exists.
        steps.append(_systemctl(kind, "enable", UNIT_NAME))
        notes += _no_config(kind, config, f"systemctl {scope}start {UNIT_NAME}")
    if kind == "system":
        notes.append(
            "tokens: /etc/credstore/<connection name> (root, mode 0600) is read as the "
            "credential of that connection; for names other than crm add LoadCredential=<name> "
            "with `systemctl edit replicad`"
        )
    notes += [
        f"status: systemctl {scope}status {UNIT_NAME}",
        f"logs:   journalctl {scope}-u {UNIT_NAME} -f",
    ]
    return Plan(kind, tuple(steps), tuple(notes))


def _no_config(kind: Kind, config: Path, start: str) -> list[str]:
    notes = [f"no config at {config} yet: write it, then start the service: {start}"]
    if kind != "system" and os.environ.get("REPLICAD_CONFIG"):
        where = "`systemctl --user edit replicad`" if kind == "user" else "EnvironmentVariables"
        notes.append(f"the service does not see $REPLICAD_CONFIG; set it with {where}")
    return notes


def _plan_install_agent(content: str, config: Path, has_config: bool) -> Plan:
    target = agent_path()
    domain = f"gui/{os.getuid()}"
    steps: list[Step] = [
        MakeDir(target.parent),
        MakeDir(agent_log().parent),  # launchd creates the log file, not its folder
        # A loaded agent keeps its old definition until booted out; not loaded is fine.
        Run(("launchctl", "bootout", f"{domain}/{LABEL}"), check=False),
        Write(target, content),
    ]
    bootstrap = ("launchctl", "bootstrap", domain, str(target))
    notes: list[str] = []
    if has_config:
        steps.append(Run(bootstrap))
    else:
        # RunAtLoad would start it at once, and KeepAlive restart it every 10 s, failing.
        notes += _no_config("launchd", config, shlex.join(bootstrap))
    notes += [f"status: launchctl print {domain}/{LABEL}", f"logs:   tail -f {agent_log()}"]
    return Plan("launchd", tuple(steps), tuple(notes))


def plan_uninstall(kind: Kind) -> Plan:
    """The steps that stop, disable and remove the service; the replica stays."""
    if kind == "launchd":
        target = agent_path()
        stop = Run(("launchctl", "bootout", f"gui/{os.getuid()}", str(target)), check=False)
        return Plan(kind, (stop, Remove(target)), (f"kept: the logs in {agent_log().parent}",))
    target = SYSTEM_UNIT if kind == "system" else user_unit_path()
    steps: tuple[Step, ...] = (
        _systemctl(kind, "disable", "--now", UNIT_NAME),
        Remove(target),
        _systemctl(kind, "daemon-reload"),
    )
    notes: tuple[str, ...] = ()
    if kind == "system":
        notes = (
            "kept: the replica in /var/lib/replicad, /etc/replicad, and the user replicad "
            f"({SYSUSERS_FILE})",
        )
    return Plan(kind, steps, notes)


def _differs(path: Path, content: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") != content
    except OSError:
        return False  # not installed yet: enable --now starts it


# -- doing ----------------------------------------------------------------------------


def describe(step: Step) -> str:
    """One line saying what a step does, shell-like."""
    if isinstance(step, MakeDir):
        return f"mkdir -p {shlex.quote(str(step.path))}"
    if isinstance(step, Write):
        return f"write {shlex.quote(str(step.path))} (mode {step.mode:04o})"
    if isinstance(step, Remove):
        return f"rm -f {shlex.quote(str(step.path))}"
    suffix = "  # a failure here is fine" if not step.check else ""
    return shlex.join(step.argv) + suffix


def execute(plan: Plan) -> None:
    """Carry out a plan, stopping at the first failed step."""
    for step in plan.steps:
        if isinstance(step, Run):
            _run(step)
            continue
        try:
            if isinstance(step, MakeDir):
                step.path.mkdir(parents=True, exist_ok=True)
            elif isinstance(step, Write):
                _write_atomic(step.path, step.content, step.mode)
            else:
                step.path.unlink(missing_ok=True)
        except OSError as e:
            hint = " (run it with sudo?)" if isinstance(e, PermissionError) else ""
            raise ServiceError(f"cannot change {step.path}: {e.strerror}{hint}") from None


def _write_atomic(path: Path, content: str, mode: int) -> None:
    # A half-written unit must never be picked up by a daemon-reload.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run(step: Run) -> None:
    try:
        done = subprocess.run(step.argv, capture_output=True, text=True, check=False)
    except OSError as e:
        if not step.check:
            return
        raise ServiceError(f"{shlex.join(step.argv)}: {e.strerror}") from None
    if done.returncode != 0 and step.check:
        lines = (done.stderr or done.stdout).strip().splitlines()
        why = lines[0] if lines else f"exit status {done.returncode}"
        raise ServiceError(f"{shlex.join(step.argv)} failed: {why}")


def _missing_manager(kind: Kind) -> str | None:
    """Why the service manager cannot be driven here (None: it can)."""
    tool = "launchctl" if kind == "launchd" else "systemctl"
    if shutil.which(tool) is None:
        return f"{tool} not found"
    if kind != "launchd" and not Path("/run/systemd/system").is_dir():
        # sd_booted(): systemctl is installed (a container, WSL) but systemd is not PID 1.
        return "systemd is not running on this machine"
    return None


def _print_plan(plan: Plan, header: str) -> None:
    lines = [f"# {header}", *(describe(s) for s in plan.steps), *(f"# {n}" for n in plan.notes)]
    sys.stdout.write("\n".join(lines) + "\n")


# -- the command ----------------------------------------------------------------------


def service(action: str, *, user: bool = False, platform: str = sys.platform) -> int:
    """``replicad service ACTION [--user]``; returns the exit code, never raises."""
    try:
        return _service(action, user, platform)
    except ServiceError as e:
        print(f"replicad: {e}", file=sys.stderr)
        return e.code


def _service(action: str, user: bool, platform: str) -> int:
    if action not in ACTIONS:
        raise ServiceError(f"unknown action {action!r} ({', '.join(ACTIONS)})", exits.USAGE)
    kind = kind_for(platform, user)
    if action == "uninstall":
        return _apply(action, kind, plan_uninstall(kind))
    executable = find_executable()
    content = render(kind, executable)
    hidden = protected_home_paths(executable) if kind == "system" else []
    if hidden:
        home = next(h for h in PROTECTED_HOMES if hidden[0].is_relative_to(h))
        problem = (
            f"{hidden[0]} is under {home}, which the system unit hides from the service "
            "(ProtectHome=yes); install replicad and its Python outside /home, /root and "
            "/run/user (/usr/bin/python3 -m venv /opt/replicad && /opt/replicad/bin/pip "
            "install replicad) or use --user"
        )
        if action != "print":
            raise ServiceError(problem, exits.USAGE)
        print(f"replicad: warning: {problem}", file=sys.stderr)
    if action == "print":
        sys.stdout.write(content)
        return exits.OK
    return _apply(action, kind, plan_install(kind, executable, content))


def _apply(action: str, kind: Kind, plan: Plan) -> int:
    flag = " --user" if kind == "user" else ""
    name = LABEL if kind == "launchd" else UNIT_NAME
    if os.environ.get(DRY_RUN_ENV) == "1":
        _print_plan(plan, f"{DRY_RUN_ENV}=1: nothing was changed; {action}{flag} would run:")
        return exits.OK
    if action == "uninstall":
        target = next(s.path for s in plan.steps if isinstance(s, Remove))
        if not target.exists():
            print(f"{name} is not installed ({target} does not exist): nothing to do")
            return exits.OK
    missing = _missing_manager(kind)
    if missing:
        _print_plan(plan, f"{missing}: nothing was changed; {action}{flag} would run:")
        print(f"replicad: {missing}: nothing was changed (the steps are above)", file=sys.stderr)
        return exits.FAILURE
    if kind == "launchd" and os.geteuid() == 0:
        raise ServiceError("a launchd agent belongs to a user: run this without sudo", exits.USAGE)
    if kind == "system" and os.geteuid() != 0:
        raise ServiceError(
            f"the system unit needs root: sudo {_self()} service {action} "
            "(or --user for a service of your own)",
            exits.USAGE,
        )
    execute(plan)
    written = [s.path for s in plan.steps if isinstance(s, Write)]
    done = f"installed {written[-1]}" if action == "install" else f"uninstalled {name}"
    sys.stdout.write("\n".join([done, *plan.notes]) + "\n")
    return exits.OK


def _self() -> str:
    """How to run this replicad again, e.g. under sudo (whose PATH lacks venvs)."""
    try:
        return shlex.quote(str(find_executable()))
    except ServiceError:
        return "replicad"
