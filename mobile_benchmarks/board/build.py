"""Build the emulated aarch64 board into its cache folder, one idempotent step at a time.

Each step writes its result under a temporary name, renames it into place and then writes a stamp
holding the step's key (package versions, wheel pins): a re-run skips every step whose stamp matches,
and a step interrupted half-way is simply redone. Nothing outside the board folder is changed — the
Debian packages are fetched with a private apt configuration (``-o Dir::…``) and unpacked with
``dpkg-deb -x``, never installed — except ``/run/sshd``, which a root sshd insists on (see
:mod:`mobile_benchmarks.board.sshd`).

Every missing piece (a tool, the network, a package, a wheel) is one :class:`LesionliteError` line.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from lesionlite.atomic import replace_dir
from lesionlite.errors import LesionliteError
from mobile_benchmarks.board import DEFAULT_QEMU_CPU, EMULATOR_ENV, HOST_ALIAS, BoardPaths

DEBIAN_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: qemu 7.2 (bookworm) dies with "uncaught target signal 11" on `import onnxruntime`; 10.x works
QEMU_PACKAGE = "qemu-user/bookworm-backports"
#: arm64 Python 3.11 and the shared libraries it and the runtime wheels load (closure of
#: python3.11-minimal + libpython3.11-stdlib + libstdc++6 in bookworm, without dpkg/perl/tar)
ARM64_PACKAGES = (
    "libc6", "libgcc-s1", "libstdc++6", "gcc-12-base", "python3.11-minimal", "libpython3.11-minimal",
    "libpython3.11-stdlib", "libexpat1", "zlib1g", "libssl3", "libbz2-1.0", "libcrypt1", "libdb5.3",
    "libffi8", "liblzma5", "libncursesw6", "libnsl2", "libreadline8", "libsqlite3-0", "libtinfo6",
    "libtirpc3", "libuuid1", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0",
    "libcom-err2", "libkeyutils1",
)
#: a loopback sshd when the machine has none (the container's policy-rc.d keeps a packaged one off)
SSHD_PACKAGES = ("openssh-server", "openssh-sftp-server", "libwrap0")
#: runtimes the board runs; pinned to the host's versions so host-vs-ARM differences are kernels, not versions
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert")
WHEEL_PLATFORMS = ("manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64")

Log = Callable[[str], None]


def _run(cmd: list[str], what: str, timeout: float = 1800.0, **kw) -> subprocess.CompletedProcess:
    """Run a build command; a failure is one line naming ``what`` and the command's last message."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise LesionliteError(f"board: {what}: '{cmd[0]}' not found") from None
    except subprocess.TimeoutExpired:
        raise LesionliteError(f"board: {what}: no result within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines()
                 if ln.strip() and not ln.startswith("W: Download is performed unsandboxed")]
        err = [ln for ln in lines if ln.startswith(("E:", "ERROR", "error"))] or lines
        raise LesionliteError(f"board: {what}: {(err[-1] if err else f'exit status {proc.returncode}').strip()}")
    return proc


def check_tools() -> None:
    """The host tools the build and the ssh target need; each missing one is named with its package."""
    need = {"apt-get": "apt (the board is built from Debian packages)", "dpkg-deb": "dpkg",
            "ssh": "openssh-client", "scp": "openssh-client", "ssh-keygen": "openssh-client"}
    missing = [f"'{tool}' ({pkg})" for tool, pkg in need.items() if shutil.which(tool) is None]
    if missing:
        raise LesionliteError(f"board: missing host tool(s) {', '.join(missing)}; install them and re-run 'board up'")
    if os.uname().machine not in ("x86_64", "amd64"):
        raise LesionliteError(f"board: the emulated board is built for x86_64 hosts (this is {os.uname().machine})")


def host_sshd() -> Path | None:
    """The machine's own sshd, if installed (``/usr/sbin`` is often not on a user's PATH)."""
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)
    return Path(found) if found else None


def wheel_pins() -> list[str]:
    """``numpy==X`` etc. at the versions installed on the host (the same runtime on both sides)."""
    pins = []
    for name in WHEELS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise LesionliteError(f"board: the host has no '{name}' installed; the board installs the same version "
                                  "as the host (pip install 'lesionlite[all]')") from None
    return pins


class Builder:
    """Runs the steps of ``board up`` (everything but starting sshd) with progress lines."""

    def __init__(self, paths: BoardPaths, log: Log) -> None:
        self.p = paths
        self.log = log

    # --- bookkeeping -----------------------------------------------------------------------------
    def _cached(self, step: str, key: str) -> bool:
        s = self.p.stamp(step)
        return s.is_file() and s.read_text(encoding="utf-8") == key

    def _done(self, step: str, key: str) -> None:
        tmp = self.p.stamp(step).with_suffix(".tmp")
        tmp.write_text(key, encoding="utf-8")
        os.replace(tmp, self.p.stamp(step))

    def _staged_dir(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))

    def _apt_opts(self) -> list[str]:
        a = self.p.apt
        return ["-o", f"Dir::Etc::sourcelist={a / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
                "-o", f"Dir::State::Lists={a / 'lists'}", "-o", f"Dir::Cache={a / 'cache'}",
                "-o", "APT::Architectures::=amd64", "-o", "APT::Architectures::=arm64",
                "-o", "Debug::NoLocking=1", "-o", "APT::Get::List-Cleanup=0", "-q"]

    # --- steps -----------------------------------------------------------------------------------
    def steps(self) -> list[tuple[str, Callable[[], str | None]]]:
        need_sshd = host_sshd() is None
        steps = [("apt lists (private: bookworm + bookworm-backports, amd64 + arm64)", self.apt_lists),
                 ("download .deb packages", lambda: self.download(need_sshd)),
                 ("qemu-aarch64 (user mode, qemu 10 from bookworm-backports)", self.qemu),
                 ("arm64 Python 3.11 sysroot", self.sysroot),
                 ("aarch64 wheels " + ", ".join(wheel_pins()), self.wheels)]
        if need_sshd:
            steps.append(("sshd (extracted from Debian's openssh-server; none on this machine)", self.sshd))
        steps += [("keys and ssh/sshd configuration (loopback only)", self.keys),
                  ("python wrapper bin/python3-aarch64", self.wrapper)]
        return steps

    def build(self) -> None:
        check_tools()
        self.p.root.mkdir(parents=True, exist_ok=True)
        steps = self.steps()
        for i, (title, fn) in enumerate(steps, 1):
            self.log(f"[board] {i}/{len(steps)} {title} ...")
            note = fn()
            self.log(f"[board]     {note or 'done'}")

    def apt_lists(self) -> str | None:
        sources = (f"deb [signed-by={KEYRING}] {DEBIAN_MIRROR} bookworm main\n"
                   f"deb [signed-by={KEYRING}] {DEBIAN_MIRROR} bookworm-backports main\n")
        if self._cached("apt", sources):
            return "cached"
        if not Path(KEYRING).is_file():
            raise LesionliteError(f"board: Debian archive keyring {KEYRING} missing (package debian-archive-keyring)")
        for d in ("lists/partial", "cache/archives/partial"):
            (self.p.apt / d).mkdir(parents=True, exist_ok=True)
        (self.p.apt / "sources.list").write_text(sources, encoding="utf-8")
        what = f"cannot download Debian package lists from {DEBIAN_MIRROR}"
        proc = _run(["apt-get", *self._apt_opts(), "update"], what, timeout=900)
        # apt-get update exits 0 when a source cannot be reached: its warnings say so, and lists are missing
        failed = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "Failed to fetch" in ln or "Could not" in ln]
        got = {(suite, arch) for suite in ("bookworm", "bookworm-backports") for arch in ("amd64", "arm64")
               if list((self.p.apt / "lists").glob(f"*_dists_{suite}_main_binary-{arch}_Packages*"))}
        if failed or len(got) < 4:
            raise LesionliteError(f"board: {what}: {(failed or ['package lists incomplete'])[0].strip()}")
        self._done("apt", sources)
        return None

    def download(self, need_sshd: bool) -> str | None:
        wanted = [f"{p}:arm64" for p in ARM64_PACKAGES] + ["media-types", QEMU_PACKAGE]
        if need_sshd:
            wanted += list(SSHD_PACKAGES)
        key = " ".join(wanted)
        if self._cached("debs", key):
            return "cached"
        staged = self._staged_dir(self.p.debs)
        try:
            _run(["apt-get", *self._apt_opts(), "download", *wanted], "cannot download the Debian packages",
                 timeout=1800, cwd=staged)
            os.chmod(staged, 0o755)
            replace_dir(staged, self.p.debs)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        self._done("debs", key)
        mb = sum(f.stat().st_size for f in self.p.debs.glob("*.deb")) / 1e6
        return f"{len(list(self.p.debs.glob('*.deb')))} packages, {mb:.0f} MB"

    def _deb(self, prefix: str, arch: str) -> Path:
        found = sorted(self.p.debs.glob(f"{prefix}_*_{arch}.deb"))
        if not found:
            raise LesionliteError(f"board: package {prefix} ({arch}) missing from {self.p.debs}; "
                                  f"delete {self.p.stamp('debs')} and re-run 'board up'")
        return found[-1]

    def qemu(self) -> str | None:
        deb = self._deb("qemu-user", "amd64")
        if self._cached("qemu", deb.name) and self.p.qemu.is_file():
            return "cached"
        staged = self._staged_dir(self.p.qemu.parent)
        try:
            # only the one binary (the package holds every target's: 372 MB unpacked)
            tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            try:
                _run(["tar", "-x", "-C", str(staged), "./usr/bin/qemu-aarch64"], f"cannot unpack {deb.name}",
                     stdin=tar.stdout)
            finally:
                tar.stdout.close()
                tar.wait()
            os.replace(staged / "usr/bin/qemu-aarch64", staged / "qemu-aarch64")
            shutil.rmtree(staged / "usr")
            os.chmod(staged, 0o755)
            version = _run([str(staged / "qemu-aarch64"), "--version"], "qemu-aarch64 does not run on this host")
            replace_dir(staged, self.p.qemu.parent)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        self._done("qemu", deb.name)
        return version.stdout.splitlines()[0]

    def _extract_all(self, debs: list[Path], final: Path) -> None:
        staged = self._staged_dir(final)
        try:
            for deb in debs:
                _run(["dpkg-deb", "-x", str(deb), str(staged)], f"cannot unpack {deb.name}")
            os.chmod(staged, 0o755)
            replace_dir(staged, final)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _emulated(self, args: list[str], what: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "QEMU_CPU": DEFAULT_QEMU_CPU, "PYTHONPATH": str(self.p.site),
               "HOME": str(self.p.root)}
        return _run([str(self.p.qemu), "-L", str(self.p.sysroot), str(self.p.sysroot / "usr/bin/python3.11"), *args],
                    what, timeout=timeout, env=env)

    def sysroot(self) -> str | None:
        debs = [self._deb(p, "arm64") for p in ARM64_PACKAGES] + [self._deb("media-types", "all")]
        key = " ".join(d.name for d in debs)
        if self._cached("sysroot", key) and self.p.sysroot.is_dir():
            return "cached"
        self._extract_all(debs, self.p.sysroot)
        out = self._emulated(["-c", "import platform, ssl, sqlite3; print(platform.machine(), platform.python_version())"],
                             "the arm64 Python does not start under qemu-aarch64")
        self._done("sysroot", key)
        return f"python {out.stdout.strip()} under emulation"

    def wheels(self) -> str | None:
        pins = wheel_pins()
        key = " ".join(pins + list(WHEEL_PLATFORMS))
        if self._cached("wheels", key) and self.p.site.is_dir():
            return "cached"
        staged = self._staged_dir(self.p.site)
        try:
            plat = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
            _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(staged),
                  "--only-binary=:all:", *plat, "--python-version", "311", "--implementation", "cp", "--abi", "cp311",
                  *pins], "cannot download the aarch64 wheels from PyPI", timeout=1800)
            os.chmod(staged, 0o755)
            replace_dir(staged, self.p.site)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        out = self._emulated(["-c", "import numpy, onnxruntime, ai_edge_litert.interpreter as i; "
                                    "print('numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"],
                             "the aarch64 runtimes do not import under qemu-aarch64", timeout=900)
        self._done("wheels", key)
        return out.stdout.strip().splitlines()[-1]

    def sshd(self) -> str | None:
        debs = [self._deb(p, "amd64") for p in SSHD_PACKAGES]
        key = " ".join(d.name for d in debs)
        if self._cached("sshd", key) and (self.p.sshd_root / "usr/sbin/sshd").is_file():
            return "cached"
        self._extract_all(debs, self.p.sshd_root)
        self._done("sshd", key)
        return None

    def keys(self) -> str | None:
        ssh = self.p.ssh
        ssh.mkdir(parents=True, exist_ok=True)
        os.chmod(ssh, 0o700)
        made = []
        for name in ("host_ed25519", "id_ed25519"):
            if not (ssh / name).is_file():
                (ssh / f"{name}.pub").unlink(missing_ok=True)
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"lesionlite-board-{name}", "-f", str(ssh / name)],
                     f"cannot generate the {name} key")
                made.append(name)
        (ssh / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text(), encoding="utf-8")
        os.chmod(ssh / "authorized_keys", 0o600)
        return f"generated {', '.join(made)}" if made else "keys cached"

    def wrapper(self) -> str | None:
        p = self.p
        version = self._deb("qemu-user", "amd64").name.split("_")[1].replace("%3a", ":").split(":")[-1].split("+")[0]
        text = f"""#!/bin/sh
# lesionlite emulated aarch64 board: arm64 Python 3.11 under qemu-aarch64 user mode (not a phone:
# times measured here are an emulator's). QEMU_CPU=neoverse-n1 is ~10x faster than 'max' for fp32.
export QEMU_CPU="${{QEMU_CPU:-{DEFAULT_QEMU_CPU}}}"
export {EMULATOR_ENV}="qemu-aarch64 {version} user mode, CPU $QEMU_CPU"
export PYTHONPATH="{p.site}"
unset PYTHONHOME
exec "{p.qemu}" -L "{p.sysroot}" "{p.sysroot}/usr/bin/python3.11" "$@"
"""
        p.python.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.python.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)
        os.replace(tmp, p.python)
        return str(p.python)


def ssh_config_text(paths: BoardPaths, port: int, user: str) -> str:
    """Client settings for the board: ``ssh -F SSH_CONFIG lesionlite-board`` (own key, own known_hosts)."""
    return (f"Host {HOST_ALIAS}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
            f"  IdentityFile {paths.client_key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {paths.known_hosts}\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n")
