"""SSHShell: the `Shell` protocol over one paramiko transport to a login node (through its jump
hosts): commands run and streamed, files read and written over one SFTP session, transient faults
retried, and the connection's lifecycle. See the package docstring (`hpcjob.ssh`) for the rules."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import posixpath
import shlex
import socket
import stat
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import paramiko

from hpcjob.errors import HpcjobError
from hpcjob.shell import (
    UNPACK_SCRIPT,
    CommandResult,
    OutputCallback,
    command_error,
    not_a_file,
    tar_payload,
)
from hpcjob.ssh.channel import (
    CommandTimeout,
    Relay,
    collect,
    describe_fault,
    remote_command,
    sftp_makedirs,
    sftp_stat,
    sftp_walk,
    strip_before_marker,
)
from hpcjob.ssh.hostkeys import Confirm, HostKeyPolicy, changed_key_error, load_host_keys
from hpcjob.ssh.login import Login, Prompt
from hpcjob.ssh.target import Hop, SSHTarget

if TYPE_CHECKING:
    from hpcjob.shell import Shell

# paramiko logs a dropped connection at ERROR from its own thread; the retry or the error this
# module raises says it in the user's words instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

T = TypeVar("T")


@dataclass
class _Attempt:
    sent: bool = False  # the command reached the server: not to be sent again unless idempotent


@dataclass
class _Connection:
    clients: list[paramiko.SSHClient] = field(default_factory=list)
    sftp: paramiko.SFTPClient | None = None
    sftp_base: int = 0

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.clients[-1].get_transport()
        assert transport is not None
        return transport


class QuickAckSocket(socket.socket):
    """A TCP socket that ACKs at once after each read. sshd answers a command in several small
    writes (without TCP_NODELAY for a command without a terminal): Nagle holds each next one
    until the previous is ACKed, and Linux delays that ACK up to ~40 ms — the first command of
    every connection paid it. TCP_QUICKACK turns the delay off until the kernel turns it back
    on, so it is set again after every read."""

    @classmethod
    def taking(cls, sock: socket.socket) -> QuickAckSocket:
        """This kind of socket in place of `sock` (the same connection and timeout)."""
        timeout = sock.gettimeout()
        quick = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        quick.settimeout(timeout)
        quick.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return quick

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


class SSHShell:
    """A login node over SSH: one lazily opened connection, commands and files (see `hpcjob.ssh`).

    Counters for the benchmark: `connections_opened` (SSH connections, jump hops included),
    `channels_opened` (exec sessions, SFTP, direct-tcpip), `commands_run`; `auth_attempts`,
    `sftp_requests` and `round_trips` (commands + SFTP requests) are properties.
    """

    def __init__(
        self,
        target: SSHTarget,
        *,
        prompt: Prompt | None = None,
        confirm: Confirm | None = None,
        interactive: bool | None = None,
        login_shell: bool = True,
        profile_name: str | None = None,
        retries: int = 3,
        backoff_s: Sequence[float] = (0.25, 1.0, 2.0),
        sleep: Callable[[float], None] = time.sleep,
        connect_timeout_s: float = 20.0,
        io_timeout_s: float = 120.0,
        tcp_nodelay: bool = True,
    ) -> None:
        self.target = target
        self.confirm = confirm
        self.login_shell = login_shell
        self.profile_name = profile_name
        self.retries = retries
        self.backoff_s = tuple(backoff_s) or (1.0,)
        self.sleep = sleep
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.tcp_nodelay = tcp_nodelay
        self.quick_ack = hasattr(socket, "TCP_QUICKACK")  # Linux: see QuickAckSocket
        self.connections_opened = 0
        self.channels_opened = 0
        self.commands_run = 0
        self.trusted: list[str] = []  # host keys accepted through `confirm`
        self._conn: _Connection | None = None
        self._sftp_done = 0
        self._home: str | None = None
        self._login = Login(prompt or getpass.getpass, interactive, profile_name=profile_name)
        # A refused login or host key is final for this shell: asking again risks Snellius's ban.
        self._refused: HpcjobError | None = None

    # ---- the Shell protocol
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> CommandResult:
        """Run argv on the login node. Lost connections are retried only when `idempotent` or
        before the command was sent: sbatch must never run twice."""
        words = tuple(argv)
        result = self._attempt(
            f"`{shlex.join(words)}`",
            lambda attempt: self._run_once(words, timeout, env, attempt),
            retry=idempotent,
        )
        if check and result.returncode != 0:
            raise command_error(result)
        return result

    def stream(
        self,
        argv: Sequence[str],
        on_output: OutputCallback,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """`run` (same remote command, marker and login shell) that hands the output to
        `on_output` as it arrives; never re-run once sent. On a timeout or an exception the
        channel is closed."""
        words = tuple(argv)
        return self._attempt(
            f"`{shlex.join(words)}`",
            lambda attempt: self._run_once(words, timeout, env, attempt, on_output),
            retry=False,
        )

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        full = self.expand_home(path)

        def read(sftp: paramiko.SFTPClient) -> bytes:
            # Checked before opening: the server's open of a FIFO would wait for a writer, and a
            # link to /dev/zero never ends.
            if not stat.S_ISREG(sftp.stat(full).st_mode or 0):
                raise not_a_file(full)
            with sftp.open(full, "rb") as handle:
                size = handle.stat().st_size or 0
                count = max(0, size - offset if limit is None else min(limit, size - offset))
                if count == 0:
                    return b""
                data = b"".join(handle.readv([(offset, count)]))  # pipelined requests
                if len(data) != count:  # a transfer that ended early is never taken for whole
                    raise EOFError(f"read {len(data)} of {count} bytes of {full}")
                return data

        return self._file_op(f"reading {full}", read)

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write atomically: a temporary name, then posix-rename over the final one."""
        full = self.expand_home(path)
        folder, name = posixpath.split(full)
        tmp = posixpath.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")

        def write(sftp: paramiko.SFTPClient) -> None:
            try:
                with sftp.open(tmp, "wb") as handle:
                    handle.set_pipelined(True)
                    handle.write(data)
                    handle.chmod(mode)
                sftp.posix_rename(tmp, full)
            except BaseException:
                self._quietly(lambda: sftp.remove(tmp))
                raise

        self._file_op(f"writing {full}", write)

    def write_files(self, root: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        """All files in one command, a tar on its stdin (UNPACK_SCRIPT), instead of about five
        SFTP round trips per file; safe to repeat, so retried on a dropped connection. No login
        profile is loaded: unpacking needs only bash, tar and coreutils."""
        words = ("bash", "-c", UNPACK_SCRIPT, "hpcjob-stage", root)
        payload = tar_payload(files)
        result = self._attempt(
            f"writing {len(files)} files to {root}",
            lambda attempt: self._run_once(words, 120, None, attempt, stdin=payload, profile=False),
            retry=True,
        )
        if result.returncode != 0:
            raise command_error(result, f"Writing files to {root}")

    def makedirs(self, path: str) -> None:
        full = self.expand_home(path)
        self._file_op(f"creating {full}", lambda sftp: sftp_makedirs(sftp, full))

    def exists(self, path: str) -> bool:
        full = self.expand_home(path)
        return self._file_op(f"looking for {full}", lambda sftp: sftp_stat(sftp, full) is not None)

    def size(self, path: str) -> int | None:
        full = self.expand_home(path)

        def size(sftp: paramiko.SFTPClient) -> int | None:
            attrs = sftp_stat(sftp, full)
            if attrs is None or not stat.S_ISREG(attrs.st_mode or 0):
                return None
            return attrs.st_size or 0

        return self._file_op(f"looking at {full}", size)

    def expand_home(self, path: str) -> str:
        """`~` and `~/…` become the remote home (asked once, over SFTP); other paths are kept."""
        if path != "~" and not path.startswith("~/"):
            return path
        if self._home is None:
            self._home = self._file_op("finding the home folder", lambda s: s.normalize("."))
        return self._home + path[1:]

    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        """Files under a folder as (relative path, size), at most `max_depth` folders down."""
        root = self.expand_home(path)
        return self._file_op(f"listing {root}", lambda sftp: sftp_walk(sftp, root, max_depth))

    # ---- connection
    @property
    def auth_attempts(self) -> int:
        return self._login.attempts

    @property
    def sftp_requests(self) -> int:
        conn = self._conn
        live = conn.sftp.request_number - conn.sftp_base if conn and conn.sftp else 0
        return self._sftp_done + live

    @property
    def round_trips(self) -> int:
        return self.commands_run + self.sftp_requests

    def stats(self) -> dict[str, int]:
        return {
            "connections": self.connections_opened,
            "channels": self.channels_opened,
            "commands": self.commands_run,
            "sftp_requests": self.sftp_requests,
            "round_trips": self.round_trips,
            "auth_attempts": self.auth_attempts,
        }

    def connect(self) -> None:
        """Open the connection now (it otherwise opens on first use)."""
        self._attempt("connecting", lambda _attempt: self._transport(), retry=True)

    def close(self) -> None:
        self._drop()
        self._login.close()

    def __enter__(self) -> SSHShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tcp_socket(self) -> socket.socket | None:
        """The TCP socket of the first hop (None before connecting or through a ProxyCommand)."""
        if self._conn is None:
            return None
        first = self._conn.clients[0].get_transport()
        sock = getattr(first, "sock", None)
        return sock if isinstance(sock, socket.socket) else None

    def _transport(self) -> paramiko.Transport:
        if self._refused is not None:
            raise self._refused
        if self._conn is None or not self._conn.transport.is_active():
            self._drop()
            try:
                self._conn = self._open()
            except HpcjobError as exc:
                self._refused = exc
                raise
        return self._conn.transport

    def _sftp(self) -> paramiko.SFTPClient:
        self._transport()
        conn = self._conn
        assert conn is not None
        if conn.sftp is None:
            self.channels_opened += 1
            try:
                sftp = paramiko.SFTPClient.from_transport(conn.transport)
            except paramiko.SSHException as exc:
                if not conn.transport.is_active():
                    raise  # the connection dropped: transient, retried by the caller
                raise self._sftp_refused(describe_fault(exc)) from exc
            if sftp is None:
                raise self._sftp_refused("no reply")
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(self.io_timeout_s)
            conn.sftp, conn.sftp_base = sftp, sftp.request_number
        return conn.sftp

    @property
    def _host_label(self) -> str:
        """The login node in messages: its name, and the profile that names it."""
        host = self.target.login.hostname
        return f"{host} (profile {self.profile_name})" if self.profile_name else host

    @property
    def _profile_words(self) -> str:
        return f"profile {self.profile_name}" if self.profile_name else "the profile"

    def _sftp_refused(self, why: str) -> HpcjobError:
        return HpcjobError(
            f"{self._host_label} refused an SFTP session ({why}); "
            "hpcjob reads and writes run files over SFTP.",
            hint="Ask the cluster's admins to enable the sftp subsystem of its sshd "
            "(`Subsystem sftp internal-sftp` in sshd_config), or work on the login node itself.",
        )

    def _open(self) -> _Connection:
        conn = _Connection()
        try:
            sock: Any = None
            for index, hop in enumerate(self.target.hops):
                timeout = hop.connect_timeout or self.connect_timeout_s
                if index == 0:
                    sock = self._first_socket(hop, timeout)
                else:
                    sock = self._through(conn, index, timeout)
                client = paramiko.SSHClient()
                conn.clients.append(client)
                load_host_keys(client, hop)
                client.set_missing_host_key_policy(self._host_key_policy(index))
                self.connections_opened += 1
                try:
                    client.connect(
                        hop.hostname,
                        hop.port,
                        username=hop.user,
                        sock=sock,
                        timeout=timeout,
                        banner_timeout=timeout,
                        auth_timeout=timeout,
                        auth_strategy=self._login.strategy(hop, index),
                    )
                except paramiko.BadHostKeyException as exc:
                    raise changed_key_error(hop, exc, self.profile_name) from None
                client_transport = client.get_transport()
                if client_transport is not None:
                    client_transport.set_keepalive(30)
        except BaseException:
            self._close_clients(conn)
            if isinstance(sock, socket.socket):
                sock.close()
            raise
        return conn

    def _through(self, conn: _Connection, index: int, timeout: float) -> paramiko.Channel:
        """A `direct-tcpip` channel from the previous hop to this one (ProxyJump)."""
        hop, jump = self.target.hops[index], self.target.hops[index - 1]
        self.channels_opened += 1
        try:
            return conn.transport.open_channel(
                "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as exc:
            raise HpcjobError(
                f"The jump host {jump.hostname} could not reach {hop.hostname} port {hop.port}: "
                f"{exc.text}.",
                hint="Check HostName/Port of the host behind ProxyJump in ~/.ssh/config.",
            ) from exc

    def _first_socket(self, hop: Hop, timeout: float) -> Any:
        if hop.proxy_command:
            return paramiko.ProxyCommand(hop.proxy_command)
        try:
            sock = socket.create_connection((hop.hostname, hop.port), timeout=timeout)
        except socket.gaierror as exc:
            of = f" (profile {self.profile_name})" if self.profile_name else ""
            raise HpcjobError(
                f"Cannot find the host {hop.hostname}{of}: {exc.strerror or exc}.",
                hint=f"Check `host` of {self._profile_words} (or HostName in ~/.ssh/config) and "
                "your network.",
            ) from exc
        # paramiko leaves Nagle on: each small request then waits for the delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if self.tcp_nodelay else 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return QuickAckSocket.taking(sock) if self.quick_ack else sock

    def _host_key_policy(self, index: int) -> HostKeyPolicy:
        return HostKeyPolicy(
            self.target.hops[index],
            jumps=self.target.hops[:index],
            confirm=self.confirm,
            profile_name=self.profile_name,
            trusted=self.trusted,
        )

    def _drop(self) -> None:
        """Forget the connection (a fault, or close); the next operation opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.sftp is not None:
                self._sftp_done += conn.sftp.request_number - conn.sftp_base
            self._close_clients(conn)

    def _close_clients(self, conn: _Connection) -> None:
        if conn.sftp is not None:
            self._quietly(conn.sftp.close)
        for client in reversed(conn.clients):
            self._quietly(client.close)

    @staticmethod
    def _quietly(action: Callable[[], object]) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection may fail any way
            action()

    # ---- retries
    def _attempt(self, what: str, op: Callable[[_Attempt], T], *, retry: bool) -> T:
        """Run op; on a transient fault reconnect and run it again (a few times, backing off)
        when `retry` or when nothing was sent yet. Login and host-key errors are never retried."""
        tries = 1 + max(0, self.retries)
        for number in range(tries):
            attempt = _Attempt()
            try:
                return op(attempt)
            except HpcjobError:
                raise
            except Exception as exc:
                if not self._transient(exc):
                    raise
                self._drop()
                if attempt.sent and not retry:
                    raise HpcjobError(
                        f"The connection to {self._host_label} was lost while "
                        f"{what} ran ({describe_fault(exc)}); it may or may not have run, and "
                        "hpcjob did not run it again.",
                        hint="Check what happened (`hpcjob status`) before trying again.",
                    ) from exc
                if number + 1 >= tries:
                    of = f", profile {self.profile_name}" if self.profile_name else ""
                    raise HpcjobError(
                        f"Lost the connection to {self.target.login.hostname} ({what}{of}): "
                        f"{describe_fault(exc)}; gave up after {tries} tries.",
                        hint=f"Check the host and port of {self._profile_words} (or "
                        "~/.ssh/config) and your network (Snellius accepts only whitelisted "
                        "addresses; from elsewhere use its VPN or a jump host, ProxyJump in "
                        "~/.ssh/config).",
                    ) from exc
                self.sleep(self.backoff_s[min(number, len(self.backoff_s) - 1)])
        raise AssertionError("unreachable")

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
            return False
        if isinstance(exc, (EOFError, ConnectionError, TimeoutError, socket.timeout)):
            return True
        if isinstance(exc.__context__, (EOFError, ConnectionError)):
            # SFTP's "Server connection dropped" (raised from an EOFError) comes before the
            # transport itself has noticed that the connection is gone.
            return True
        if isinstance(exc, (OSError, paramiko.SSHException)):
            # An SFTP status error (no such file, permission) leaves the connection up.
            conn = self._conn
            return conn is None or not conn.transport.is_active()
        return False

    def _file_op(self, what: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        # Every file operation is safe to repeat: reads, stats, and writes that rename a full file.
        return self._attempt(what, lambda _attempt: op(self._sftp()), retry=True)

    # ---- commands
    def _run_once(
        self,
        argv: tuple[str, ...],
        timeout: float | None,
        env: Mapping[str, str] | None,
        attempt: _Attempt,
        on_output: OutputCallback | None = None,
        *,
        stdin: bytes | None = None,
        profile: bool = True,
    ) -> CommandResult:
        marker = f"__hpcjob_{uuid.uuid4().hex}__"
        command = remote_command(
            argv, marker, env=env, login_shell=self.login_shell, load_profile=profile
        )
        transport = self._transport()
        channel = transport.open_session(timeout=self.connect_timeout_s)
        self.channels_opened += 1
        try:
            attempt.sent = True
            channel.exec_command(command)
            self.commands_run += 1
            if stdin:
                # OSError: the command ended before reading it all; its status and stderr say why.
                with contextlib.suppress(OSError):
                    channel.sendall(stdin)
            channel.shutdown_write()  # stdin at EOF, as LocalShell's DEVNULL
            relay = None if on_output is None else Relay(marker, on_output)
            out, err, status = collect(channel, timeout, relay)
        except CommandTimeout:
            if on_output is not None:
                raise HpcjobError(
                    f"`{shlex.join(argv)}` was stopped after {timeout:g} s on "
                    f"{self.target.login.hostname}.",
                    hint="It ran out of its time; give it more or run it as a job.",
                ) from None
            raise HpcjobError(
                f"`{shlex.join(argv)}` did not answer within {timeout:g} s on "
                f"{self.target.login.hostname}.",
                hint="The scheduler may be busy; try again in a minute.",
            ) from None
        finally:
            channel.close()
        if status == -1 and not transport.is_active():
            raise ConnectionResetError("the connection closed while the command ran")
        stdout = strip_before_marker(out.decode(errors="replace"), marker)
        stderr = strip_before_marker(err.decode(errors="replace"), marker)
        return CommandResult(argv, status, stdout, stderr)


if TYPE_CHECKING:

    def _is_a_shell(shell: SSHShell) -> Shell:
        return shell  # mypy checks that SSHShell matches the Shell protocol
