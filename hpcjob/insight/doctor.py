"""`hpcjob doctor`: the profile checked end to end, each finding with its fix.

The checks are independent functions in `CHECKS`, run in order, each guarded so that one that
breaks does not stop the others; each returns its findings (hpcjob/probe.py's `Finding`). What
needs the login node comes from one probe script, run once (hpcjob/probe.py): a failed
connection skips those checks and says why. A check added later (the accounts) is one more entry.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hpcjob.checkup import (
    Finding,
    Status,
    data_finding,
    hpcjob_python_finding,
    purged_prefix,
    quota_findings,
)
from hpcjob.env.setup import venv_warning
from hpcjob.errors import HpcjobError
from hpcjob.probe import (
    PART_LIMIT_S,
    ProbeOutput,
    parse_probe,
    parse_python_version,
    probe_argv,
    python_too_old,
    version_text,
)
from hpcjob.run.context import Context, cached_access, cached_partitions, run_root
from hpcjob.run.prepare import PCAM_SPLIT_FILE, purge_note

PCAM_FILES = tuple(
    PCAM_SPLIT_FILE.format(split=s, xy=xy) for s in ("train", "valid") for xy in "xy"
)
# The probe's parts each stop after PART_LIMIT_S; this bounds the whole round trip.
PROBE_TIMEOUT_S = PART_LIMIT_S * 8 + 30


@dataclass
class Doctor:
    """One doctor's visit: the invocation, why the login node cannot be reached (then the remote
    checks skip), and the probe's output, asked for once."""

    ctx: Context
    offline: str | None = None
    _probe: ProbeOutput | None = field(default=None, repr=False)
    _probe_error: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.ctx.profile.name

    @property
    def where(self) -> str:
        host = self.ctx.profile.get("host")
        return f"on {host}" if host else "on this machine"

    @property
    def setup_env(self) -> str:
        return f"hpcjob setup-env --profile {self.name}"

    def probe(self) -> ProbeOutput:
        """The probe's output (run on the first call); an HpcjobError when it could not run."""
        if self._probe_error is not None:
            raise HpcjobError(self._probe_error)
        if self._probe is None:
            try:
                self._probe = self._run_probe()
            except HpcjobError as exc:
                self._probe_error = exc.message.splitlines()[0]
                raise HpcjobError(self._probe_error) from exc
        return self._probe

    def _run_probe(self) -> ProbeOutput:
        profile = self.ctx.profile
        argv = probe_argv(
            str(profile.get("python") or "python3"),
            profile.get("venv"),
            data_dir_of(self.ctx),
            run_root(self.ctx, connect=False),
            data_files=PCAM_FILES,
            modules=profile.modules,
        )
        done = self.ctx.scheduler.shell.run(
            argv, check=False, timeout=PROBE_TIMEOUT_S, idempotent=True
        )
        found = parse_probe(done.stdout)
        if not found.complete:
            tail = " ".join((done.stderr or "").strip().splitlines()[-2:])
            raise HpcjobError(
                f"the probe script {self.where} stopped early (exit status {done.returncode})"
                + (f": {tail}" if tail else "")
            )
        return found

    def skipped(self, check: str) -> Finding | None:
        """The finding of a remote check that cannot run: no connection, or no probe."""
        if self.offline is not None:
            return Finding(check, "skip", f"not checked: no connection ({self.offline})")
        try:
            self.probe()
        except HpcjobError as exc:
            return Finding(
                check,
                "fail",
                f"not checked: {exc.message}",
                "Run `hpcjob doctor` again; "
                "if it keeps failing, check the login node with `hpcjob connect`.",
            )
        return None


Check = Callable[[Doctor], list[Finding]]


def data_dir_of(ctx: Context) -> str | None:
    """The profile's data folder as a job would get it (a relative one of a profile without a
    host is taken from here)."""
    import os

    data_dir = ctx.profile.get("data_dir")
    if data_dir and not ctx.profile.get("host"):
        return os.path.abspath(os.path.expanduser(str(data_dir)))
    return str(data_dir) if data_dir else None


# ------------------------------------------------------------------------------ this machine


def check_python(doc: Doctor) -> list[Finding]:
    on_login_node = doc.ctx.profile.scheduler == "slurm" and not doc.ctx.profile.get("host")
    return [hpcjob_python_finding(sys.version_info[:3], sys.executable, on_login_node)]


def check_profile(doc: Doctor) -> list[Finding]:
    profile = doc.ctx.profile
    keys = ("host", "user", "port", "modules", "python", "venv", "data_dir", "remote_root")
    values = [
        f"{key} {', '.join(value) if isinstance(value, list) else value}"
        for key in keys
        if (value := profile.get(key)) not in (None, "", [])
    ]
    sources = list(dict.fromkeys(profile.sources.values()))
    said = (
        f"profile {profile.name}: scheduler {profile.scheduler}; {'; '.join(values)} "
        f"(from {', '.join(sources)}; `hpcjob config show` tells each value's source)"
    )
    return [Finding("profile", "ok", said)]


# ------------------------------------------------------------------------------ the connection


_WHO = 'printf "%s\\t%s\\t%s\\n" "$(id -un)" "$(hostname)" "$HOME"'


def check_connection(doc: Doctor) -> list[Finding]:
    """The host key and the login (over SSH); for a profile without a host, what runs here."""
    profile = doc.ctx.profile
    if not profile.get("host"):
        return [
            Finding("host key", "skip", f"no SSH: profile {doc.name} runs on this machine"),
            _local_scheduler(doc),
        ]
    started = time.monotonic()
    try:
        done = doc.ctx.scheduler.shell.run(["sh", "-c", _WHO], timeout=60, idempotent=True)
    except HpcjobError as exc:
        return _connection_failed(doc, exc)
    seconds = time.monotonic() - started
    user, _, rest = done.stdout.strip().partition("\t")
    host, _, home = rest.partition("\t")
    return [
        Finding("host key", "ok", f"the host key of {profile.get('host')} is known and matches"),
        Finding(
            "connection", "ok", f"logged in as {user} on {host} in {seconds:.1f} s; home {home}"
        ),
    ]


def _local_scheduler(doc: Doctor) -> Finding:
    if doc.ctx.scheduler.jobs_run_here:
        return Finding("connection", "ok", "jobs run on this machine (the embedded scheduler)")
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        doc.offline = "sbatch is not on PATH here"
        return Finding(
            "connection",
            "fail",
            f"profile {doc.name} uses the Slurm of this machine, but sbatch is not on PATH",
            "Run hpcjob on the cluster's login node, or use a profile with a host "
            "(`hpcjob doctor --profile snellius`).",
        )
    return Finding("connection", "ok", f"Slurm on this machine ({sbatch})")


def _connection_failed(doc: Doctor, exc: HpcjobError) -> list[Finding]:
    lines = exc.message.splitlines()
    doc.offline = lines[0].rstrip(".")
    said = " ".join(lines)
    fix = exc.hint or f"Check the profile's host, user and key; `hpcjob connect {doc.name}`."
    if "host key" in exc.message.lower():
        return [
            Finding("host key", "fail", said, exc.hint),
            Finding("connection", "skip", "not logged in: the host key was refused"),
        ]
    if "authentic" in said.lower():  # the host key is checked before the login
        key = Finding("host key", "ok", "known (the login itself failed)")
    else:
        key = Finding("host key", "skip", "not checked: the connection failed before")
    return [key, Finding("connection", "fail", said, fix)]


# ------------------------------------------------------------------------------ the cluster


def check_partitions(doc: Doctor) -> list[Finding]:
    if doc.offline is not None:
        return [Finding("partitions", "skip", f"not checked: no connection ({doc.offline})")]
    found = cached_partitions(doc.ctx, refresh=True)
    if found is None:
        return [Finding("partitions", "skip", "the embedded scheduler: any partition name runs")]
    names = {p.name: p for p in found}
    default = next((p.name for p in found if p.is_default), None)
    wanted = doc.ctx.profile.partitions
    missing = {w: n for w, n in wanted.items() if n not in names}
    listed = ", ".join(names)
    if missing:
        said = ", ".join(f"{n} ({w})" for w, n in missing.items())
        return [
            Finding(
                "partitions",
                "fail",
                f"profile {doc.name}'s partitions table names {said}, which the cluster lacks; it "
                f"has {listed}",
                f"Change [profiles.{doc.name}.partitions] to partitions of `hpcjob partitions "
                f"--profile {doc.name}`.",
            )
        ]
    down = [n for n in wanted.values() if not names[n].available]
    said = f"{len(found)} partitions ({listed}; default {default or 'none'})"
    if wanted:
        said += "; the profile's " + ", ".join(f"{w} → {n}" for w, n in wanted.items()) + " exist"
    if down:
        return [
            Finding(
                "partitions",
                "warn",
                f"{said}; {', '.join(down)} not up now",
                "Jobs there wait until it is up; `hpcjob partitions` shows its state.",
            )
        ]
    return [Finding("partitions", "ok", said)]


def check_accounts(doc: Doctor) -> list[Finding]:
    """The user's accounts (one query, the one preflight caches) against the account and the
    partitions the profile names."""
    if doc.offline is not None:
        return [Finding("accounts", "skip", f"not checked: no connection ({doc.offline})")]
    access = cached_access(doc.ctx, refresh=True)
    if access is None:
        return [Finding("accounts", "skip", "the embedded scheduler: any account, any partition")]
    if access.unknown is not None:
        return [
            Finding(
                "accounts",
                "warn",
                f"your accounts could not be asked ({access.unknown}); submits go on unchecked",
                "`sacctmgr show associations user=$USER` on the login node shows them; ask the "
                "cluster's helpdesk if it fails.",
            )
        ]
    mine = access.accounts
    listed = "; ".join(
        f"{a}{' (default)' if a == access.default_account else ''}: {', '.join(p) or 'none'}"
        for a, p in access.partitions.items()
    )
    account = doc.ctx.profile.get("account")
    if account and account not in mine:
        return [
            Finding(
                "accounts",
                "fail",
                f"profile {doc.name} names account {account}, which user {access.user} does not "
                f"have; yours: {', '.join(mine) or 'none'}",
                f"Set `account` in [profiles.{doc.name}] to one of yours, or remove it.",
            )
        ]
    chosen = str(account or access.default_account or "")
    problems = []
    for workload, partition in doc.ctx.profile.partitions.items():
        able = access.accounts_for(partition)
        if not able:
            problems.append(("fail", f"no account of yours may use {partition} ({workload})"))
        elif chosen and chosen not in able:
            problems.append(
                (
                    "warn",
                    f"{partition} ({workload}) is not for {chosen}: hpcjob picks "
                    f"{' or '.join(able)} (or give --account)",
                )
            )
    if not problems:
        return [Finding("accounts", "ok", f"accounts and their partitions — {listed}")]
    status: Status = "fail" if any(kind == "fail" for kind, _ in problems) else "warn"
    return [
        Finding(
            "accounts",
            status,
            "; ".join(text for _, text in problems) + f" (accounts — {listed})",
            f"Change [profiles.{doc.name}.partitions] or `account` to what `hpcjob partitions "
            f"--profile {doc.name}` shows your accounts may use.",
        )
    ]


def check_modules(doc: Doctor) -> list[Finding]:
    """The profile's modules load in a shell there, and the Python they give."""
    skipped = doc.skipped("modules")
    if skipped is not None:
        return [skipped, Finding("cluster python", skipped.status, skipped.found, skipped.fix)]
    probe = doc.probe()
    return [_modules_finding(doc, probe), _python_finding(doc, probe)]


def _modules_finding(doc: Doctor, probe: ProbeOutput) -> Finding:
    lines = probe.get("modules")
    fix_modules = f"Fix `modules` under [profiles.{doc.name}] in {doc.ctx.settings.config_path}"
    if not lines or lines[0][0] == "none":
        return Finding("modules", "skip", f"profile {doc.name} loads no modules")
    if lines[0][0] == "no_module_command":
        return Finding(
            "modules",
            "fail",
            f"profile {doc.name} loads modules, but `module` is not a command {doc.where} "
            "(no Lmod or Environment Modules found)",
            f"{fix_modules}: remove them where the cluster has no modules.",
        )
    failed = [line for line in lines if line[0] == "failed"]
    if failed:
        name, said = failed[0][1], (failed[0][2] if len(failed[0]) > 2 else "")
        return Finding(
            "modules",
            "fail",
            f"`module load {name}` failed {doc.where}: {said}".rstrip(": "),
            f"`module avail` {doc.where} lists the names there (Snellius: `module load 2025` "
            f"first); {fix_modules}.",
        )
    loaded = " ".join(line[1] for line in lines if line[0] == "loaded")
    return Finding("modules", "ok", f"`module load {loaded}` works {doc.where}")


def _python_finding(doc: Doctor, probe: ProbeOutput) -> Finding:
    line = probe.first("python") or ("missing", "?")
    python = str(doc.ctx.profile.get("python") or "python3")
    after = " after the modules" if doc.ctx.profile.modules else ""
    if line[0] == "timeout":
        return Finding(
            "cluster python",
            "fail",
            f"{python}{after} did not answer in {PART_LIMIT_S} s {doc.where}",
            "Try again; a busy login node is slow.",
        )
    version = parse_python_version(line[1]) if line[0] == "version" else None
    if version is None:
        said = line[2] if len(line) > 2 else ""
        return Finding(
            "cluster python",
            "fail",
            f"{python}{after} does not run {doc.where}: {said}",
            f"Set `python` (or `modules`) of profile {doc.name} to a Python there.",
        )
    said = f"{python}{after} is Python {version_text(version)} ({line[2]}) {doc.where}"
    if python_too_old(version):
        return Finding(
            "cluster python",
            "warn",
            f"{said}: too old for the workloads (3.10 or newer)",
            f'Give profile {doc.name} a module Python: modules = ["2025", '
            f'"Python/3.13.1-GCCcore-14.2.0"] (Snellius), then `{doc.setup_env} --force`.',
        )
    return Finding("cluster python", "ok", said)


# ------------------------------------------------------------------------------ the venv, data


def check_venv(doc: Doctor) -> list[Finding]:
    profile = doc.ctx.profile
    venv = profile.get("venv")
    if not venv:
        python = profile.get("python") or "python3"
        if doc.ctx.scheduler.jobs_run_here:
            return [Finding("venv", "skip", f"no venv: jobs run {python} (this hpcjob's Python)")]
        return [
            Finding(
                "venv",
                "warn",
                f"profile {doc.name} has no venv: jobs run {python} with only the packages the "
                "modules give (ModuleNotFoundError: h5py, torch …)",
                f'Set venv = "~/hpcjob/venv" under [profiles.{doc.name}] in '
                f"{doc.ctx.settings.config_path}, then `{doc.setup_env}`.",
            )
        ]
    skipped = doc.skipped("venv")
    if skipped is not None:
        return [skipped]
    return [_venv_finding(doc, str(venv), doc.probe())]


def _venv_finding(doc: Doctor, venv: str, probe: ProbeOutput) -> Finding:
    line = probe.first("venv") or ("missing", venv)
    if line[0] == "missing":
        return Finding(
            "venv",
            "warn",
            f"the venv {venv} does not exist {doc.where}: it was "
            "never set up, and jobs that need it are refused",
            f"{doc.setup_env}",
        )
    if line[0] in ("broken", "timeout"):
        said = line[2] if len(line) > 2 else f"no answer in {PART_LIMIT_S} s"
        return Finding(
            "venv",
            "fail",
            f"the venv's python {line[1]} does not run: {said}",
            f"{doc.setup_env} --force",
        )
    said = f"venv {venv}: Python {line[1]}"
    imports = [entry for entry in probe.get("venv") if entry[0] == "import"]
    broken = [f"{e[1]} ({e[3]})" for e in imports if e[2] != "ok"]
    if any(entry[0] == "timeout_imports" for entry in probe.get("venv")):
        broken.append(f"importing torch and h5py took over {PART_LIMIT_S} s")
    said += "".join(f", {e[1]} {e[3]}" for e in imports if e[2] == "ok")
    warning = venv_warning(doc.ctx)  # the marker: set up to the end, for these modules/Python
    if warning is not None:
        return Finding("venv", "warn", f"{said}; {warning[0].lower()}{warning[1:]}", doc.setup_env)
    if broken:
        return Finding(
            "venv",
            "warn",
            f"{said}; not importable: {'; '.join(broken)}",
            f"{doc.setup_env} (the workloads need torch and h5py)",
        )
    return Finding("venv", "ok", f"{said}; set up by setup-env for these modules and Python")


def check_data(doc: Doctor) -> list[Finding]:
    data_dir = data_dir_of(doc.ctx)
    if not data_dir:
        return [
            Finding(
                "data", "skip", f"profile {doc.name} has no data_dir (give --data-dir to submit)"
            )
        ]
    skipped = doc.skipped("data")
    if skipped is not None:
        return [skipped]
    return [data_finding(doc.probe(), data_dir, doc.where, doc.setup_env, PCAM_FILES)]


# ------------------------------------------------------------------------------ disk, purge


def check_quota(doc: Doctor) -> list[Finding]:
    skipped = doc.skipped("quota")
    if skipped is not None:
        return [skipped]
    return quota_findings(doc.probe(), doc.where)


def check_purge(doc: Doctor) -> list[Finding]:
    purged: dict[str, int] = doc.ctx.profile.get("purged") or {}
    if not purged:
        return [Finding("purge", "skip", f"profile {doc.name} names no purged filesystems")]
    paths = {}
    if doc.offline is None and doc.skipped("purge") is None:
        paths = {line[1]: line[2] for line in doc.probe().get("quota") if line[0] == "path"}
    data_dir = data_dir_of(doc.ctx)
    found = []
    note = purge_note(data_dir, purged, doc.name)
    if note:
        found.append(
            Finding(
                "purge",
                "warn",
                note,
                "Keep the data in your project space or home and point data_dir there.",
            )
        )
    root = paths.get("runs") or run_root(doc.ctx, connect=False)
    venv = paths.get("venv") or doc.ctx.profile.get("venv")
    for label, path in (("remote_root", root), ("venv", venv)):
        prefix = purged_prefix(str(path or ""), purged)
        if prefix is not None:
            found.append(
                Finding(
                    "purge",
                    "warn",
                    f"{label} {path} is under {prefix}, purged after {purged[prefix]} days "
                    "untouched",
                    f"Move {label} to your home or project space ([profiles.{doc.name}]).",
                )
            )
    if not found:
        where = ", ".join(purged)
        found.append(
            Finding("purge", "ok", f"data_dir, remote_root and venv are not under {where}")
        )
    return found


# ------------------------------------------------------------------------------ the visit


CHECKS: tuple[tuple[str, Check], ...] = (
    ("python", check_python),
    ("profile", check_profile),
    ("connection", check_connection),
    ("partitions", check_partitions),
    ("accounts", check_accounts),
    ("modules", check_modules),
    ("venv", check_venv),
    ("data", check_data),
    ("quota", check_quota),
    ("purge", check_purge),
)


def diagnose(ctx: Context, checks: Sequence[tuple[str, Check]] = CHECKS) -> list[Finding]:
    """Every check's findings, in order; a check that breaks is a failed finding of its own."""
    doc = Doctor(ctx)
    found: list[Finding] = []
    for name, check in checks:
        try:
            found += check(doc)
        except HpcjobError as exc:
            found.append(Finding(name, "fail", " ".join(exc.message.splitlines()), exc.hint))
        except Exception as exc:  # a bug in one check must not hide the others' findings
            found.append(Finding(name, "fail", f"the check broke: {type(exc).__name__}: {exc}"))
    return found


def failed(findings: Sequence[Finding]) -> list[str]:
    """The checks that failed, each once."""
    return list(dict.fromkeys(f.check for f in findings if f.status == "fail"))
