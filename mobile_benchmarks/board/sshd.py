"""The board's loopback sshd: started with our own config, key and port, stopped by its PID.

It listens on 127.0.0.1 only, on a free port chosen at start (never 22), accepts only the board's
generated key (no passwords) for the current user, and records its PID in ``run/state.json``.
``stop`` signals that PID only after checking that the process is still *our* sshd (its command line
names our config), so a recycled PID is never hit.

Root and the privilege-separation user: a root sshd refuses to start without the ``sshd`` user,
which only ``apt-get install openssh-server`` creates. Rather than edit ``/etc/passwd``, the board
then runs sshd in a private mount namespace (``unshare --mount``) where a copy of ``/etc/passwd``
with that user is bind-mounted over the real one — visible to sshd alone. A non-root sshd needs
neither (it can only log in its own user, which is all the board needs).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lesionlite.errors import LesionliteError
from mobile_benchmarks.board import HOST_ALIAS, BoardPaths
from mobile_benchmarks.board.build import host_sshd, ssh_config_text

Log = Callable[[str], None]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie — exited, not yet reaped — counts as gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_state(paths: BoardPaths) -> dict[str, Any] | None:
    try:
        return json.loads(paths.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def running(paths: BoardPaths) -> dict[str, Any] | None:
    """The state of the board's sshd if it is up (PID alive and running our config), else None."""
    st = read_state(paths)
    if not st or not isinstance(st.get("pid"), int):
        return None
    if _alive(st["pid"]) and str(paths.ssh / "sshd_config") in _cmdline(st["pid"]):
        return st
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sshd_binary(paths: BoardPaths) -> tuple[Path, Path, dict[str, str]]:
    """(sshd, sftp-server, extra environment): the machine's own, else the extracted Debian one."""
    system = host_sshd()
    if system is not None:
        sftp = next((Path(p) for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
                                       "/usr/libexec/openssh/sftp-server") if os.access(p, os.X_OK)), None)
        return system, sftp or paths.sshd_root / "usr/lib/openssh/sftp-server", {}
    root = paths.sshd_root
    sshd = root / "usr/sbin/sshd"
    if not sshd.is_file():
        raise LesionliteError(f"board: no sshd on this machine and none extracted under {root}; run 'board up'")
    libs = ":".join(str(root / d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
    return sshd, root / "usr/lib/openssh/sftp-server", {"LD_LIBRARY_PATH": libs}


def _config(paths: BoardPaths, port: int, user: str, sftp: Path) -> str:
    ssh = paths.ssh
    return (f"# lesionlite board sshd: loopback only, key only\nPort {port}\nListenAddress 127.0.0.1\n"
            f"HostKey {ssh / 'host_ed25519'}\nPidFile {paths.run / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {ssh / 'authorized_keys'}\nAllowUsers {user}\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PermitRootLogin prohibit-password\nX11Forwarding no\nAllowTcpForwarding no\nPrintMotd no\n"
            f"Subsystem sftp {sftp}\n")


def _launch_cmd(paths: BoardPaths, sshd: Path, cfg: Path, log_file: Path) -> list[str]:
    base = [str(sshd), "-D", "-f", str(cfg), "-E", str(log_file)]
    if os.geteuid() != 0:
        return base
    run_dir = Path("/run/sshd")  # compiled-in privilege-separation chroot of Debian's sshd
    if not run_dir.is_dir():
        try:
            run_dir.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            raise LesionliteError(f"board: a root sshd needs {run_dir}, which cannot be created: {exc}") from None
    try:
        pwd.getpwnam("sshd")
        return base
    except KeyError:
        pass
    unshare = shutil.which("unshare")
    if unshare is None:
        raise LesionliteError("board: a root sshd needs the user 'sshd' (created by 'apt-get install openssh-server') "
                              "or 'unshare' (util-linux) to provide it privately; neither is available")
    passwd = paths.run / "passwd"
    text = Path("/etc/passwd").read_text(encoding="utf-8")
    passwd.write_text(text.rstrip("\n") + "\nsshd:x:65534:65534:lesionlite board privsep:/run/sshd:/usr/sbin/nologin\n",
                      encoding="utf-8")
    script = f'mount --bind "{passwd}" /etc/passwd && exec "$0" "$@"'
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", script, *base]


def start(paths: BoardPaths, log: Log, wait_s: float = 20.0) -> dict[str, Any]:
    """Start the loopback sshd (or report the one already running) and check a login works."""
    st = running(paths)
    if st:
        log(f"[board] sshd already running (pid {st['pid']}, 127.0.0.1:{st['port']})")
        return st
    if not (paths.ssh / "authorized_keys").is_file():
        raise LesionliteError(f"board: keys missing under {paths.ssh}; run 'board up'")
    sshd, sftp, env_extra = _sshd_binary(paths)
    user = pwd.getpwuid(os.getuid()).pw_name
    paths.run.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    cfg = paths.ssh / "sshd_config"
    cfg.write_text(_config(paths, port, user, sftp), encoding="utf-8")
    env = {**os.environ, **env_extra}
    check = subprocess.run([str(sshd), "-t", "-f", str(cfg)], capture_output=True, text=True, env=env)
    cmd = _launch_cmd(paths, sshd, cfg, paths.run / "sshd.log")
    if check.returncode != 0 and "Privilege separation user" not in check.stderr:
        raise LesionliteError(f"board: sshd rejects its configuration: {(check.stderr.strip().splitlines() or ['?'])[-1]}")
    pid_file = paths.run / "sshd.pid"
    pid_file.unlink(missing_ok=True)
    (paths.run / "sshd.log").unlink(missing_ok=True)
    launcher = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    host_pub = (paths.ssh / "host_ed25519.pub").read_text(encoding="utf-8").split()
    paths.known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n", encoding="utf-8")
    paths.ssh_config.write_text(ssh_config_text(paths, port, user), encoding="utf-8")
    deadline = time.monotonic() + wait_s
    pid = None
    while time.monotonic() < deadline:
        if pid is None and pid_file.is_file():
            try:
                pid = int(pid_file.read_text().strip())
            except ValueError:
                pass
        if launcher.poll() is not None and (pid is None or not _alive(pid)):
            tail = _log_tail(paths)
            raise LesionliteError(f"board: sshd exited at start: {tail}")
        if pid is not None and _login_ok(paths):
            state = {"pid": pid, "port": port, "user": user, "host": "127.0.0.1", "sshd": str(sshd),
                     "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                     "ssh_config": str(paths.ssh_config), "remote_python": str(paths.python)}
            tmp = paths.state.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, paths.state)
            log(f"[board] sshd up: pid {pid}, 127.0.0.1:{port}, user {user}, key {paths.client_key}")
            return state
        time.sleep(0.3)
    if pid is not None:
        _terminate(pid)
    raise LesionliteError(f"board: sshd did not accept a login within {wait_s:.0f} s: {_log_tail(paths)}")


def _log_tail(paths: BoardPaths) -> str:
    try:
        lines = (paths.run / "sshd.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "no log"


def _login_ok(paths: BoardPaths) -> bool:
    try:
        p = subprocess.run(["ssh", "-F", str(paths.ssh_config), "-o", "ConnectTimeout=3", HOST_ALIAS, "true"],
                           capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0


def _terminate(pid: int, wait_s: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop(paths: BoardPaths, log: Log) -> bool:
    """Stop the board's sshd by the PID it recorded; False when it was not running."""
    st = running(paths)
    if st is None:
        paths.state.unlink(missing_ok=True)
        log("[board] not running")
        return False
    _terminate(st["pid"])
    paths.state.unlink(missing_ok=True)
    log(f"[board] sshd (pid {st['pid']}, port {st['port']}) stopped")
    return True
