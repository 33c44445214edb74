"""The shipped service units and ``replicad service``.

The units are checked with the real ``systemd-analyze`` (skipped only where it is not
installed). Quirks of ``systemd-analyze`` these tests account for:

- ``verify`` exits 0 after an unknown key or a misspelled value (it only logs them),
  so a unit passes only when ``verify`` prints nothing at all;
- ``verify`` requires every ``Exec*=`` executable to exist, so the templates are
  rendered with a real executable first, exactly as ``replicad service`` renders them;
- ``verify`` checks the syntax of ``User=replicad`` but never looks the user up (that
  happens when the service starts), so the unit is verified as shipped, without a
  ``replicad`` user on the test machine and without substituting anything;
- ``verify`` loads the unit's default dependencies (sysinit.target, …) from the host,
  so the host's unit search path is left alone;
- ``--user verify`` needs an existing ``$XDG_RUNTIME_DIR``, and would read the
  developer's own ``~/.config/systemd/user``: it runs with a temporary HOME and runtime
  directory.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.daemon import service
from replicad.daemon.service import (
    LABEL,
    TEMPLATES,
    Kind,
    Run,
    Write,
    exec_word,
    plan_install,
    protected_home_paths,
    render,
    template_dir,
)

REPLICAD = Path(sys.executable).parent / "replicad"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment with a private HOME, config and runtime directory."""
    home = tmp_path / "home"
    runtime = tmp_path / "runtime"
    home.mkdir(exist_ok=True)
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPLICAD_", "XDG_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_RUNTIME_DIR=str(runtime),
        SYSTEMD_LOG_COLOR="0",
        **extra,
    )
    return env


def _analyze(tmp_path: Path, kind: Kind, *args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    scope = ["--user"] if kind == "user" else []
    return subprocess.run(
        [ANALYZE, *scope, *args], capture_output=True, text=True, env=_env(tmp_path), timeout=60
    )


def _rendered(tmp_path: Path, kind: Kind, executable: Path = REPLICAD) -> Path:
    # verify takes the unit's name from the file name: keep it replicad.service.
    unit = tmp_path / kind / "replicad.service"
    unit.parent.mkdir()
    unit.write_text(render(kind, executable), encoding="utf-8")
    return unit


@needs_analyze
@pytest.mark.parametrize("kind", ["system", "user"])
def test_unit_passes_verify_silently(tmp_path: Path, kind: Kind) -> None:
    """systemd-analyze verify prints nothing about the rendered unit."""
    unit = _rendered(tmp_path, kind)
    done = _analyze(tmp_path, kind, "verify", "--man=no", str(unit))
    assert done.stdout + done.stderr == "", done.stdout + done.stderr
    assert done.returncode == 0


@needs_analyze
def test_verify_output_catches_a_typo(tmp_path: Path) -> None:
    """A misspelled key makes verify print (while it still exits 0): the check above bites."""
    unit = _rendered(tmp_path, "system")
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    done = _analyze(tmp_path, "system", "verify", "--man=no", str(unit))
    assert "WatchdogSecs" in done.stdout + done.stderr


@needs_analyze
def test_exec_start_survives_spaces_and_specifier_characters(tmp_path: Path) -> None:
    """An install path with a space, % and $ is escaped so systemd finds the executable."""
    odd = tmp_path / "my venv 100% $HOME" / "replicad"
    odd.parent.mkdir()
    odd.write_text("#!/bin/sh\n")
    odd.chmod(0o755)
    unit = _rendered(tmp_path, "user", odd)
    done = _analyze(tmp_path, "user", "verify", "--man=no", str(unit))
    assert done.stdout + done.stderr == "", done.stdout + done.stderr


@needs_analyze
def test_system_unit_exposure_is_at_most_5(tmp_path: Path) -> None:
    """systemd-analyze security rates the system unit's exposure 5.0 or better."""
    unit = _rendered(tmp_path, "system")
    done = _analyze(tmp_path, "system", "security", "--offline=yes", str(unit))
    found = re.search(r"Overall exposure level for replicad\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found[1]) <= 5.0, done.stdout


@needs_analyze
def test_user_unit_keeps_its_sandboxing(tmp_path: Path) -> None:
    """The user unit keeps the sandboxing a user manager applies without privileges,
    and systemd-analyze security rates it no worse than the README's 6.2 (it scores
    it as if it ran as root: capabilities a user service never holds count against
    it)."""
    unit = _rendered(tmp_path, "user")
    text = unit.read_text()
    for directive in (
        "NoNewPrivileges=yes", "KeyringMode=private", "RestrictSUIDSGID=yes",
        "RestrictNamespaces=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service", "UMask=0077",
    ):  # fmt: skip
        assert directive in text, directive
    done = _analyze(tmp_path, "user", "security", "--offline=yes", str(unit))
    found = re.search(r"Overall exposure level for replicad\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found[1]) <= 6.2, done.stdout


def test_launchd_agent_has_the_required_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plist parses and restarts on failure only, at login, in the background."""
    template = template_dir() / TEMPLATES["launchd"]
    assert template.name == f"{LABEL}.plist"  # launchd's convention: file named by label
    monkeypatch.setenv("HOME", str(tmp_path))
    for raw in (template.read_bytes(), render("launchd", REPLICAD).encode()):
        agent = plistlib.loads(raw)
        assert agent["Label"] == LABEL
        assert agent["ProgramArguments"][1:] == ["run"]
        assert agent["RunAtLoad"] is True
        assert agent["KeepAlive"] == {"SuccessfulExit": False}
        assert agent["ProcessType"] == "Background"
        for key in ("StandardOutPath", "StandardErrorPath"):
            assert "/Library/Logs/replicad/" in agent[key]
    # Rendered: absolute paths only, since launchd expands neither ~ nor $HOME.
    assert agent["ProgramArguments"][0] == str(REPLICAD)
    assert agent["StandardErrorPath"] == str(tmp_path / "Library/Logs/replicad/replicad.log")


def test_print_user_unit_names_this_install(tmp_path: Path) -> None:
    """`replicad service print --user` prints a unit running this install's replicad."""
    done = subprocess.run(
        [REPLICAD, "service", "print", "--user"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = [line for line in done.stdout.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1
    assert lines[0].endswith("replicad run")
    executable = Path(lines[0].removeprefix("ExecStart=").removesuffix(" run"))
    assert executable.is_absolute()
    assert executable.is_file() and os.access(executable, os.X_OK)
    assert "Type=notify" in done.stdout and "WantedBy=default.target" in done.stdout


@pytest.mark.parametrize("has_config", [True, False])
def test_install_user_dry_run_prints_commands_and_writes_nothing(
    tmp_path: Path, has_config: bool
) -> None:
    """A dry-run `install --user` prints the unit path and systemctl commands, changes nothing."""
    env = _env(tmp_path, REPLICAD_SERVICE_DRY_RUN="1")
    config = Path(env["XDG_CONFIG_HOME"]) / "replicad" / "config.toml"
    if has_config:
        config.parent.mkdir(parents=True)
        config.write_text("")
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run(
        [REPLICAD, "service", "install", "--user"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    unit = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "replicad.service"
    assert f"write {unit} (mode 0644)" in done.stdout
    assert "systemctl --user daemon-reload" in done.stdout
    if has_config:
        assert "systemctl --user enable --now replicad.service" in done.stdout
    else:
        # Without a config it would only fail: enabled, and the start command is shown.
        assert "systemctl --user enable replicad.service\n" in done.stdout
        assert "systemctl --user start replicad.service" in done.stdout
    assert sorted(tmp_path.rglob("*")) == before


def test_uninstall_user_dry_run(tmp_path: Path) -> None:
    """A dry-run `uninstall --user` stops, disables and removes the unit, then reloads."""
    env = _env(tmp_path, REPLICAD_SERVICE_DRY_RUN="1")
    done = subprocess.run(
        [REPLICAD, "service", "uninstall", "--user"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    unit = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "replicad.service"
    assert done.stdout.splitlines()[1:] == [
        "systemctl --user disable --now replicad.service",
        f"rm -f {unit}",
        "systemctl --user daemon-reload",
    ]


def _fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """Put a fake systemctl first on PATH and a temporary HOME in place; returns its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n{body}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.delenv("REPLICAD_SERVICE_DRY_RUN", raising=False)
    monkeypatch.delenv("REPLICAD_CONFIG", raising=False)
    # This machine may not run systemd: only the fake systemctl is driven.
    monkeypatch.setattr(service, "_missing_manager", lambda kind: None)
    return log


def test_install_and_uninstall_user_drive_systemctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """install --user writes the rendered unit and enables it; uninstall undoes both."""
    log = _fake_systemctl(tmp_path, monkeypatch, "exit 0")
    config = tmp_path / "home" / ".config" / "replicad" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("")
    unit = tmp_path / "home" / ".config" / "systemd" / "user" / "replicad.service"
    assert service.service("install", user=True, platform="linux") == 0
    assert unit.read_text() == render("user", service.find_executable())
    assert f"installed {unit}" in capsys.readouterr().out
    assert service.service("uninstall", user=True, platform="linux") == 0
    assert not unit.exists()
    assert log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now replicad.service",
        "--user disable --now replicad.service",
        "--user daemon-reload",
    ]


def test_failed_systemctl_exits_1_with_its_first_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing systemctl call ends the command with exit 1 and its first stderr line."""
    _fake_systemctl(
        tmp_path,
        monkeypatch,
        "echo 'Failed to connect to bus: No medium found' >&2\necho 'second line' >&2\nexit 1",
    )
    assert service.service("install", user=True, platform="linux") == 1
    assert capsys.readouterr().err == (
        "replicad: systemctl --user daemon-reload failed: Failed to connect to bus: "
        "No medium found\n"
    )


def test_system_install_plan_creates_the_user_then_enables() -> None:
    """The system install declares the user (sysusers.d), then writes and enables the unit."""
    plan = plan_install("system", Path("/opt/replicad/bin/replicad"), "[Unit]\n")
    runs = [step.argv for step in plan.steps if isinstance(step, Run)]
    writes = [step.path for step in plan.steps if isinstance(step, Write)]
    assert ("systemd-sysusers", "/etc/sysusers.d/replicad.conf") in runs
    assert writes[-1] == Path("/etc/systemd/system/replicad.service")
    assert runs[-1][:2] == ("systemctl", "enable")
    assert all("--user" not in argv for argv in runs)
    assert service.SYSUSERS_LINE == 'u replicad - "replicad sync daemon" /var/lib/replicad\n'


def test_launchd_install_plan_bootstraps_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On macOS the agent goes to ~/Library/LaunchAgents and is bootstrapped in gui/<uid>."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setattr(service, "service_config", lambda kind: tmp_path / "config.toml")
    (tmp_path / "config.toml").write_text("")
    plan = plan_install("launchd", REPLICAD, render("launchd", REPLICAD))
    agent = tmp_path / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert [s.path for s in plan.steps if isinstance(s, Write)] == [agent]
    runs = [step.argv for step in plan.steps if isinstance(step, Run)]
    assert runs[-1] == ("launchctl", "bootstrap", f"gui/{os.getuid()}", str(agent))


def test_system_unit_refuses_an_install_under_home(tmp_path: Path) -> None:
    """A console script whose Python lives under /home cannot run under ProtectHome=yes."""
    script = tmp_path / "replicad"
    script.write_text("#!/home/someone/.venv/bin/python\n")
    assert Path("/home/someone/.venv/bin/python") in protected_home_paths(script)
    assert protected_home_paths(Path("/home/someone/bin/replicad"))
    assert not protected_home_paths(Path("/opt/replicad/bin/replicad"))


def test_exec_word_escapes_for_systemd() -> None:
    """Plain paths stay; others are quoted with % doubled; what systemd refuses is an error."""
    assert exec_word("/usr/local/bin/replicad") == "/usr/local/bin/replicad"
    assert exec_word("/a b/c%d$e") == '"/a b/c%%d$e"'
    for refused in ('/a"b/replicad', "/a\\b/replicad", "/a\nb/replicad"):
        with pytest.raises(service.ServiceError, match="systemd refuses"):
            exec_word(refused)


def test_unsupported_platform_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """On a platform without systemd or launchd: exit 2 and one clear line."""
    assert service.service("install", platform="win32") == 2
    err = capsys.readouterr().err
    assert err.startswith("replicad: replicad service supports systemd")
    assert len(err.splitlines()) == 1
