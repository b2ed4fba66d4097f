"""A throw-away PostgreSQL cluster for the tests: initdb into a temporary folder as the postgres
user (the server refuses to run as root), listening on 127.0.0.1 (and on a bridge for network
namespaces, when the test machine lets us make them) on a free port, with a database and a user
with a password made for the tests. `start` returns None and a reason when any step fails."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _server_binaries() -> Path:
    """Debian's newest installed PostgreSQL (the package puts each major version in its own folder)."""
    if os.environ.get("CIFARLAB_PG_BIN"):
        return Path(os.environ["CIFARLAB_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _server_binaries()
USER, PASSWORD, DATABASE = "sweeper", "pw-s3cret-42", "sweeps"


@dataclass(frozen=True)
class Server:
    root: Path
    port: int
    hosts: tuple[str, ...]  # addresses it listens on

    def url(self, host: str = "127.0.0.1") -> str:
        return f"postgresql+psycopg://{USER}:{PASSWORD}@{host}:{self.port}/{DATABASE}"


def _as_postgres(cmd: list[str]) -> list[str]:
    """Root may not run the server: run it as the postgres user (any other user runs it as itself)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], **kwargs) -> None:
    done = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def start(extra_hosts: tuple[str, ...] = ()) -> tuple[Server | None, str]:
    if not (PG_BIN / "initdb").exists():
        return None, f"no PostgreSQL server binaries in {PG_BIN} (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no postgres user to run the server as"
    root = Path(tempfile.mkdtemp(prefix="cifarlab-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = Server(root, free_port(), ("127.0.0.1", *extra_hosts))
    try:
        _init(server)
        return server, ""
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        stop(server)
        return None, f"could not start PostgreSQL: {e}"


def _init(server: Server) -> None:
    data, pwfile = server.root / "data", server.root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    _run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"])
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all 10.0.0.0/8 scram-sha-256\n")
    resume(server)
    psql = [str(PG_BIN / "psql"), "-h", str(server.root), "-p", str(server.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    _run([*psql, f"CREATE USER {USER} WITH PASSWORD '{PASSWORD}'"])
    _run([*psql, f"CREATE DATABASE {DATABASE} OWNER {USER}"])


def _options(server: Server) -> str:
    return f"-c listen_addresses={','.join(server.hosts)} -p {server.port} -k {server.root} -c fsync=off -c max_connections=100"


def pause(server: Server) -> None:
    """Stop the server as a crash would (its data stays), for a database that dies mid-sweep."""
    _run([str(PG_BIN / "pg_ctl"), "-D", str(server.root / "data"), "-m", "immediate", "-w", "stop"])


def resume(server: Server) -> None:
    _run([str(PG_BIN / "pg_ctl"), "-D", str(server.root / "data"), "-o", _options(server), "-l", str(server.root / "log"), "-w", "-t", "60", "start"])


def stop(server: Server) -> None:
    if (server.root / "data" / "postmaster.pid").exists():
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(server.root / "data"), "-m", "immediate", "-w", "stop"]), capture_output=True, timeout=60
        )
    shutil.rmtree(server.root, ignore_errors=True)


def _network_names(count: int) -> tuple[str, list[str], str]:
    """Names and a subnet of this test session's own (its pid in them), so two sessions on one machine
    never take or remove each other's."""
    tag = os.getpid() % 100000
    subnet = f"10.{100 + (tag >> 8) % 100}.{tag % 256}"
    return f"cfl{tag}br", [f"cfl{tag}h{n}" for n in range(count)], subnet


def make_hosts(count: int) -> tuple[str | None, list[str], str]:
    """A bridge with the database's address (SUBNET.1) and `count` network namespaces, each a host
    with its own address on it (SUBNET.2, ...), joined by veth pairs; (None, [], why) where the
    machine does not allow it."""
    bridge, names, subnet = _network_names(count)
    commands = [
        ["ip", "link", "add", bridge, "type", "bridge"],
        ["ip", "addr", "add", f"{subnet}.1/24", "dev", bridge],
        ["ip", "link", "set", bridge, "up"],
    ]
    for n, name in enumerate(names):
        commands += [
            ["ip", "netns", "add", name],
            ["ip", "link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b"],
            ["ip", "link", "set", f"{name}a", "master", bridge],
            ["ip", "link", "set", f"{name}a", "up"],
            ["ip", "link", "set", f"{name}b", "netns", name],
            ["ip", "-n", name, "addr", "add", f"{subnet}.{n + 2}/24", "dev", f"{name}b"],
            ["ip", "-n", name, "link", "set", f"{name}b", "up"],
            ["ip", "-n", name, "link", "set", "lo", "up"],
        ]
    made: list[list[str]] = []
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            remove_hosts(names if made else [])
            return None, [], f"cannot make network namespaces here ({' '.join(cmd)}: {done.stderr.strip()})"
        made.append(cmd)
    return f"{subnet}.1", names, ""


def remove_hosts(names: list[str]) -> None:
    """Remove what make_hosts made (nothing when it made nothing)."""
    if not names:
        return
    bridge, _, _ = _network_names(len(names))
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{name}a"], capture_output=True)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
