"""SSH resolution without a network: profile keys vs ~/.ssh/config, aliases, ProxyJump chains,
IdentityFile expansion, fingerprints, the refusal messages, remote command quoting.

$HOME points into tmp_path in every test, so the developer's own ~/.ssh is never read.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from hpcjob.config import Settings, resolve_profile
from hpcjob.errors import HpcjobError
from hpcjob.ssh.channel import remote_command, strip_before_marker
from hpcjob.ssh.connect import ConnectOptions, connect_and_trust, ssh_shell_for
from hpcjob.ssh.hostkeys import (
    changed_host_error,
    fingerprint_sha256,
    key_type_label,
    known_hosts_lines,
    unknown_host_error,
)
from hpcjob.ssh.login import auth_failed_error
from hpcjob.ssh.session import QuickAckSocket, SSHShell
from hpcjob.ssh.target import Hop, parse_jump, read_ssh_config, resolve_target

CONFIG = """
Host snellius
    HostName snellius.surf.nl
    User scur1234
    Port 2200
    IdentityFile ~/.ssh/id_snellius
    IdentityFile ~/.ssh/keys/%h_%r

Host inner
    HostName int5.snellius.surf.nl
    ProxyJump gateway

Host gateway
    HostName gw.example.org
    User gwuser
    Port 2022
    IdentityFile ~/.ssh/id_gw
    ProxyJump bastion

Host bastion
    HostName bastion.example.org
    User bastionuser

Host chain
    HostName target.example.org
    ProxyJump alice@first.example.org:2201,second

Host second
    HostName second.example.org
    ProxyJump ignored-because-the-chain-says-how

Host loop1
    ProxyJump loop2
Host loop2
    ProxyJump loop1

Host nojump
    ProxyJump none

Host viacmd
    ProxyCommand nc %h %p

Host strict
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile ~/kh/one ~/kh/two
    GlobalKnownHostsFile none
    ConnectTimeout 7

Host *
    User everyone
"""


@pytest.fixture(autouse=True)
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def resolve(profile: dict[str, object], text: str = CONFIG, **kw: object) -> list[Hop]:
    return list(resolve_target(profile, text, local_user="me", **kw).hops)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- precedence
def test_alias_takes_hostname_user_port_and_keys_from_ssh_config(fake_home: Path) -> None:
    [hop] = resolve({"host": "snellius"})
    assert (hop.hostname, hop.user, hop.port) == ("snellius.surf.nl", "scur1234", 2200)
    assert hop.identity_files == (
        f"{fake_home}/.ssh/id_snellius",
        f"{fake_home}/.ssh/keys/snellius.surf.nl_scur1234",  # %h and %r expanded too
    )
    assert hop.identities_explicit
    assert hop.known_hosts == (f"{fake_home}/.ssh/known_hosts",)
    assert hop.global_known_hosts == ("/etc/ssh/ssh_known_hosts",)
    assert hop.host_key_name == "[snellius.surf.nl]:2200"


def test_explicit_profile_keys_beat_ssh_config(fake_home: Path) -> None:
    [hop] = resolve(
        {
            "host": "snellius",
            "user": "scur9",
            "port": 22,
            "identity_file": "~/keys/mine",
            "known_hosts": "~/kh",
        }
    )
    assert (hop.user, hop.port, hop.host_key_name) == ("scur9", 22, "snellius.surf.nl")
    # The profile's key is tried first, then the ones ~/.ssh/config names.
    assert hop.identity_files[0] == f"{fake_home}/keys/mine"
    assert f"{fake_home}/.ssh/id_snellius" in hop.identity_files[1:]
    assert hop.known_hosts == (f"{fake_home}/kh",)


def test_built_in_profile_values_rank_below_ssh_config() -> None:
    # The built-in snellius profile says port 22; the user's ~/.ssh/config says 2200 and wins.
    [hop] = resolve({"host": "snellius", "port": 22, "user": "x"}, defaults={"port", "user"})
    assert (hop.port, hop.user) == (2200, "scur1234")
    # Where ~/.ssh/config says nothing, the built-in value holds.
    [plain] = resolve({"host": "plain.example.org", "port": 2022}, "", defaults={"port"})
    assert plain.port == 2022


def test_ssh_shell_for_reads_sources_of_a_resolved_profile(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host snellius.surf.nl\n    Port 2200\n    User fromconfig\n")
    profile = resolve_profile(Settings(tmp_path / "hpcjob"), profile_flag="snellius")
    assert profile.get("port") == 22 and profile.sources["port"].startswith("built-in")
    shell = ssh_shell_for(
        profile.values, ConnectOptions(ssh_config_path=config, sources=profile.sources)
    )
    assert (shell.target.login.port, shell.target.login.user) == (2200, "fromconfig")
    # Without sources every value counts as the user's: the profile's port 22 wins.
    plain = ssh_shell_for(profile.values, ConnectOptions(ssh_config_path=config))
    assert plain.target.login.port == 22
    assert shell.connections_opened == 0  # nothing connects before first use


def test_defaults_local_user_port_22_and_openssh_key_files(fake_home: Path) -> None:
    [hop] = resolve({"host": "plain.example.org"}, "")
    assert (hop.hostname, hop.user, hop.port) == ("plain.example.org", "me", 22)
    assert not hop.identities_explicit
    assert hop.identity_files == tuple(
        f"{fake_home}/.ssh/{n}" for n in ("id_ed25519", "id_ecdsa", "id_rsa")
    )


def test_host_star_applies_after_specific_blocks() -> None:
    [hop] = resolve({"host": "other.example.org"})
    assert hop.user == "everyone"


def test_ssh_config_options_hpcjob_honours(fake_home: Path) -> None:
    [hop] = resolve({"host": "strict"})
    assert hop.identities_only and not hop.use_agent
    assert hop.known_hosts == (f"{fake_home}/kh/one", f"{fake_home}/kh/two")
    assert hop.global_known_hosts == ()
    assert hop.connect_timeout == 7
    [viacmd] = resolve({"host": "viacmd"})
    assert viacmd.proxy_command == "nc viacmd 22"


def test_match_exec_works_although_paramiko_is_imported_without_invoke() -> None:
    # A subprocess: `invoke` runs the exec command with the process's stdin.
    code = (
        "import sys, hpcjob.ssh.target as s\n"
        "print('invoke' in sys.modules)\n"
        "text = 'Match host cluster exec \"test 1 = 1\"\\n  HostName yes.example.org\\n'"
        " 'Match host cluster exec \"test 1 = 2\"\\n  User never\\n'\n"
        "[hop] = s.resolve_target({'host': 'cluster'}, text, local_user='me').hops\n"
        "print(hop.hostname, hop.user)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "yes.example.org", "me"]


def test_paramiko_is_imported_without_importlib_metadata_yet_knows_its_version() -> None:
    """paramiko's __init__ asks importlib.metadata for its own version (~30 ms of every command
    over SSH); hpcjob.ssh answers from the installed dist-info folder's name instead, and a
    later `import importlib.metadata` still gets the real module."""
    code = (
        "import sys, hpcjob.ssh, paramiko\n"
        "print('importlib.metadata' in sys.modules)\n"
        "import importlib.metadata as m\n"
        "print(paramiko.__version__ == m.version('paramiko'), hasattr(m, 'distributions'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]
    # A module imported meanwhile that asks the stand-in for more gets the real module's.
    code = (
        "import sys, hpcjob.ssh as h\n"
        "sys.modules['importlib.metadata'] = h._METADATA\n"
        "print(h._METADATA.PackageNotFoundError.__module__)\n"
        "import importlib.metadata as m\n"
        "print(m is not h._METADATA)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["importlib.metadata", "True"], done.stderr


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_the_socket_acks_at_once_after_each_read_and_that_can_be_turned_off() -> None:
    """sshd sends a command's reply in small writes; with the client's ACK delayed (~40 ms on
    Linux), Nagle holds the second one back. hpcjob's socket asks for an immediate ACK after
    each read (TCP_QUICKACK; the kernel drops that mode again by itself)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        for quick in (True, False):
            target = resolve_target({"host": "127.0.0.1", "port": port}, "", local_user="me")
            shell = SSHShell(target)
            shell.quick_ack = quick
            sock = shell._first_socket(target.hops[0], 5)
            peer, _ = server.accept()
            with sock, peer:
                peer.sendall(b"reply")
                assert sock.recv(5) == b"reply"
                assert sock.gettimeout() == 5
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                if quick:  # set again by the read (off, the kernel decides)
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) != 0
                assert isinstance(sock, QuickAckSocket) is quick


def test_bad_host_and_bad_port_are_errors() -> None:
    for host in ("", "two words", "-oProxyCommand=x"):
        with pytest.raises(HpcjobError, match="not a host name"):
            resolve({"host": host})
    with pytest.raises(HpcjobError, match="Port 'abc' is not a number"):
        resolve({"host": "x"}, "Host x\n  Port abc\n")


# ------------------------------------------------------------------------------ ProxyJump
def test_proxyjump_chain_follows_the_first_jumps_own_proxyjump() -> None:
    hops = resolve({"host": "inner", "user": "scur1"})
    assert [h.hostname for h in hops] == [
        "bastion.example.org",
        "gw.example.org",
        "int5.snellius.surf.nl",
    ]
    bastion, gateway, inner = hops
    assert (bastion.user, bastion.port) == ("bastionuser", 22)
    assert (gateway.user, gateway.port) == ("gwuser", 2022)
    assert gateway.identity_files[0].endswith("/.ssh/id_gw")
    # The profile's user is for the login node only.
    assert inner.user == "scur1"


def test_proxyjump_list_with_user_and_port_in_the_entries() -> None:
    first, second, target = resolve({"host": "chain"})
    assert (first.user, first.hostname, first.port) == ("alice", "first.example.org", 2201)
    # A later entry's own ProxyJump is ignored: the chain says how it is reached (as OpenSSH).
    assert second.hostname == "second.example.org"
    assert target.hostname == "target.example.org"


def test_proxyjump_none_loops_and_parse_errors() -> None:
    assert len(resolve({"host": "nojump"})) == 1
    with pytest.raises(HpcjobError, match="loop"):
        resolve({"host": "loop1"})
    assert parse_jump("u@h:2") == ("u", "h", 2)
    assert parse_jump("ssh://u@[::1]:2222") == ("u", "::1", 2222)
    assert parse_jump("h") == (None, "h", None)
    with pytest.raises(HpcjobError, match="ProxyJump entry"):
        parse_jump("a b")


def test_only_the_first_hop_keeps_a_proxycommand() -> None:
    text = "Host t\n  ProxyJump viacmd\n  ProxyCommand never\n" + CONFIG
    first, login = resolve({"host": "t"}, text)
    assert first.proxy_command == "nc viacmd 22" and login.proxy_command is None


# --------------------------------------------------------------------- reading the config
def test_read_ssh_config_default_path_and_includes(fake_home: Path) -> None:
    assert read_ssh_config() == ("", "~/.ssh/config")  # no file: empty, no error
    (fake_home / ".ssh" / "conf.d").mkdir()
    (fake_home / ".ssh" / "conf.d" / "cluster.conf").write_text("Host c\n  HostName c.example\n")
    (fake_home / ".ssh" / "config").write_text("Include conf.d/*.conf\nHost *\n  User u\n")
    text, name = read_ssh_config()
    assert name == "~/.ssh/config"
    [hop] = resolve({"host": "c"}, text)
    assert (hop.hostname, hop.user) == ("c.example", "u")


def test_injected_config_path_is_the_only_one_read(tmp_path: Path, fake_home: Path) -> None:
    (fake_home / ".ssh" / "config").write_text("Host x\n  HostName from-home\n")
    other = tmp_path / "other_config"
    other.write_text("Host x\n  HostName from-injected\n")
    shell = ssh_shell_for({"host": "x"}, ConnectOptions(ssh_config_path=other))
    assert shell.target.login.hostname == "from-injected"


# ------------------------------------------------------------------------------- host keys
def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    for kind in ("ed25519", "rsa", "ecdsa"):
        key = tmp_path / f"k_{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
        blob = base64.b64decode(Path(f"{key}.pub").read_text().split()[1])
        listed = subprocess.run(
            ["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert fingerprint_sha256(blob) == listed[1]
        assert f"({key_type_label(Path(f'{key}.pub').read_text().split()[0])})" == listed[-1]


def test_known_hosts_lines_finds_plain_listed_and_hashed_entries() -> None:
    hashed = paramiko.HostKeys.hash_host("[h]:2222")
    text = "\n".join(
        [
            "# comment",
            "other ssh-ed25519 AAAA",
            "a,[h]:2222 ssh-ed25519 AAAA",
            f"{hashed} ssh-rsa AAAA",
            "h ssh-ed25519 AAAA",  # port 22, a different entry
            "@cert-authority [h]:2222 ssh-ed25519 AAAA",
        ]
    )
    assert known_hosts_lines(text, "[h]:2222") == [3, 4, 6]
    assert known_hosts_lines(text, "h") == [5]


def hop(**kw: object) -> Hop:
    values: dict[str, object] = {
        "alias": "snellius",
        "hostname": "snellius.surf.nl",
        "port": 22,
        "user": "scur1",
        "known_hosts": ("/home/u/.ssh/known_hosts",),
    }
    return Hop(**{**values, **kw})  # type: ignore[arg-type]


def test_unknown_host_message_names_type_fingerprint_and_ways_to_accept() -> None:
    error = unknown_host_error(hop(port=2222), "ssh-ed25519", "SHA256:abc", profile_name="snellius")
    text = str(error)
    assert "[snellius.surf.nl]:2222 is not known" in text
    assert "ED25519 key fingerprint is SHA256:abc" in text
    assert "`hpcjob connect snellius`" in text
    assert "`ssh-keyscan -p 2222 snellius.surf.nl >> /home/u/.ssh/known_hosts`" in text
    assert "`ssh -p 2222 scur1@snellius.surf.nl`" in text
    # Behind a jump host, ssh-keyscan from here cannot reach it: connect once through the jump.
    behind = unknown_host_error(
        hop(hostname="int5"), "ssh-rsa", "SHA256:x", jumps=[hop(hostname="gw", user="g")]
    )
    assert "`ssh -J g@gw -p 22 scur1@int5`" in str(behind)
    assert "RSA key fingerprint" in str(behind)


def test_changed_host_message_is_loud_and_names_the_line_to_remove() -> None:
    text = str(
        changed_host_error(
            hop(), "ED25519 SHA256:new", "ED25519 SHA256:old", [("/home/u/.ssh/known_hosts", 7)]
        )
    )
    assert "HAS CHANGED" in text and "man-in-the-middle" in text
    assert "/home/u/.ssh/known_hosts line 7" in text
    assert "`ssh-keygen -R snellius.surf.nl -f /home/u/.ssh/known_hosts`" in text
    assert "SHA256:new" in text and "SHA256:old" in text


def test_auth_failure_message_names_user_host_keys_and_says_no_retry() -> None:
    text = str(auth_failed_error(hop(), ["/k/id (ED25519 SHA256:x)"], ["/k/missing: no such file"]))
    assert "Could not log in to snellius.surf.nl port 22 as scur1" in text
    assert "/k/id (ED25519 SHA256:x)" in text and "/k/missing: no such file" in text
    assert "does not try again" in text and "24 hours" in text
    nothing = str(auth_failed_error(hop(), []))
    assert "no key was there to offer" in nothing


def test_connect_and_trust_refuses_a_bad_host_before_any_network(tmp_path: Path) -> None:
    with pytest.raises(HpcjobError, match="not a host name"):
        connect_and_trust(
            {"host": "a b"},
            ConnectOptions(ssh_config_path=tmp_path / "none", confirm=lambda _q: True),
        )


# ------------------------------------------------------------------------ remote commands
HOSTILE = ["printf", "[%s]\\n", "a b", "$(touch /tmp/pwned)", "'q'", '"d"', "x;y", "new\nline", ""]


def test_remote_command_quotes_every_word(tmp_path: Path) -> None:
    marker = "__hpcjob_test__"
    command = remote_command(HOSTILE, marker, env={"GREETING": "hi there"}, login_shell=False)
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert strip_before_marker(proc.stdout, marker) == "".join(f"[{w}]\n" for w in HOSTILE[2:])
    assert strip_before_marker(proc.stderr, marker) == ""
    login = remote_command(["squeue", "--me"], marker)
    assert login.startswith("bash -lc ") and "exec squeue --me" in login
    with pytest.raises(ValueError):
        remote_command(["env"], marker, env={"BAD NAME": "x"})


def test_banner_before_the_marker_is_dropped() -> None:
    marker = "__m__"
    noisy = f"Welcome to Snellius!\nmodule loaded\n{marker}\nJOBID|STATE\n1|RUNNING\n"
    assert strip_before_marker(noisy, marker) == "JOBID|STATE\n1|RUNNING\n"
    assert strip_before_marker(f"no newline{marker}\nout\n", marker) == "out\n"
    assert strip_before_marker("bash: not found\n", marker) == "bash: not found\n"


def test_unreachable_host_is_retried_with_backoff_then_explained(tmp_path: Path) -> None:
    # Port 1 on loopback refuses at once: nothing was sent, so even sbatch may be tried again.
    slept: list[float] = []
    target = resolve_target({"host": "127.0.0.1", "port": 1}, "", local_user="me")
    shell = SSHShell(target, sleep=slept.append, interactive=False)
    with pytest.raises(HpcjobError, match=r"Lost the connection to 127\.0\.0\.1 .*4 tries"):
        shell.run(["sbatch", "job.sh"])
    assert slept == [0.25, 1.0, 2.0]
    assert shell.auth_attempts == 0 and shell.commands_run == 0


def test_an_unreachable_host_names_the_profile() -> None:
    target = resolve_target({"host": "127.0.0.1", "port": 1}, "", local_user="me")
    shell = SSHShell(target, sleep=lambda _s: None, interactive=False, profile_name="lab")
    with pytest.raises(HpcjobError) as info:
        shell.run(["sinfo"])
    assert "(`sinfo`, profile lab)" in info.value.message
    assert "host and port of profile lab" in (info.value.hint or "")
    refused = auth_failed_error(hop(), ["/k/id (ED25519 SHA256:x)"], profile_name="lab")
    assert "as scur1 (profile lab):" in refused.message
    assert "`user` of profile lab" in (refused.hint or "")


def test_every_host_key_hint_names_a_connect_command_that_works() -> None:
    changed = changed_host_error(
        hop(), "ED25519 SHA256:new", "ED25519 SHA256:old", [("/k", 1)], profile_name="lab"
    )
    assert "`hpcjob connect lab`" in (changed.hint or "")
    unknown = unknown_host_error(hop(), "ssh-ed25519", "SHA256:abc", profile_name="lab")
    assert "`hpcjob connect lab`" in (unknown.hint or "")
