"""What an account has left to spend (`hpcjob budget`, the dry run's budget line, submit's
warning): the cluster's own tool (`accinfo`, else `budget-overview`), asked in one command on the
login node and cached a few minutes per profile; where neither exists, what hpcjob's own runs of
the profile spent, as the ledger knows it. Asking never fails a submission: a failure is a note.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcjob import cost
from hpcjob.budget import Budget, for_account, parse_budget, probe_argv, split_probe
from hpcjob.clock import utc_now
from hpcjob.errors import HpcjobError
from hpcjob.insight.explain import actual_cost
from hpcjob.run.context import Context, write_cache

BUDGET_TTL_S = 300  # the tools' numbers change nightly (SURF) — minutes old is fresh enough
_PROBE_TIMEOUT_S = 30
NOT_FOUND = "the cluster's own budget tool (accinfo, budget-overview) was not found"
HERE = "none — runs on this machine"


@dataclass(frozen=True)
class ClusterAnswer:
    """What the login node said: the tool that answered (None: neither exists), the budgets it
    showed, when it was asked, and why its output could not be read (if so)."""

    tool: str | None
    budgets: list[Budget] = field(default_factory=list)
    checked_at: str = ""
    unreadable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cache(ctx: Context) -> Path:
    return ctx.settings.home / "cache" / f"budget-{ctx.profile.name}.json"


def _read_cache(path: Path) -> ClusterAnswer | None:
    try:
        data = json.loads(path.read_text())
        budgets = [Budget(**b) for b in data.pop("budgets")]
        return ClusterAnswer(budgets=budgets, **data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # a damaged cache is asked for again


def read_answer(stdout: str, checked_at: str) -> ClusterAnswer:
    """The probe's output as an answer: the first tool whose output reads, else why not."""
    answers = split_probe(stdout)
    for found in answers:
        budgets = parse_budget(found.text) if found.returncode == 0 else None
        if budgets:
            return ClusterAnswer(found.tool, budgets, checked_at)
    if not answers:
        return ClusterAnswer(None, [], checked_at)
    first = answers[0]
    why = f"could not read {first.tool}'s output"
    if first.returncode != 0:
        status = "was cut off" if first.returncode is None else f"exited {first.returncode}"
        head = first.text.strip().splitlines()[:1]
        why += f" (it {status}" + (f": {head[0][:200]}" if head else "") + ")"
    return ClusterAnswer(first.tool, [], checked_at, unreadable=why)


def ask_cluster(ctx: Context, refresh: bool = False) -> ClusterAnswer | None:
    """The login node's answer, from the cache when it is a few minutes old at most (offline:
    however old); None for the embedded scheduler or offline with nothing cached. A failure to
    ask is an HpcjobError."""
    if ctx.scheduler.jobs_run_here:
        return None
    path = _cache(ctx)
    if ctx.offline is not None:
        return _read_cache(path)
    fresh = path.exists() and time.time() - path.stat().st_mtime < BUDGET_TTL_S
    cached = _read_cache(path) if fresh and not refresh else None
    if cached is not None:
        return cached
    done = ctx.scheduler.shell.run(
        probe_argv(), check=False, timeout=_PROBE_TIMEOUT_S, idempotent=True
    )
    answer = read_answer(done.stdout, utc_now())
    write_cache(path, answer.to_dict())
    return answer


# -- rows -------------------------------------------------------------------------------------


def _row(budget: Budget, source: str, checked_at: str, note: str | None = None) -> dict[str, Any]:
    return {
        "account": budget.account,
        "remaining_sbu": budget.remaining_sbu,
        "initial_sbu": budget.initial_sbu,
        "used_sbu": budget.used_sbu,
        "valid_until": budget.valid_until,
        "source": source,
        "checked_at": checked_at,
        "note": note,
    }


def ledger_rows(ctx: Context, account: str | None, why: str = NOT_FOUND) -> list[dict[str, Any]]:
    """What hpcjob's runs of this profile cost, per account (a run's own, else `(default)`),
    since the first of them started; `account`: that account's alone (a row even if nothing)."""
    # A dry run before the first submission must not create the ledger just to find it empty.
    exists = ctx.settings.ledger_path.exists()
    runs = ctx.ledger.list_runs(profile=ctx.profile.name, limit=None) if exists else []
    spent: dict[str | None, list[cost.Cost]] = {}
    first: dict[str | None, str] = {}
    for run in runs:
        if run.is_array or not run.started_at:  # an array's tasks are runs of their own
            continue
        name = (run.spec.get("resources") or {}).get("account")
        if account is not None and name != account:
            continue
        found = actual_cost(ctx, run, ctx.ledger.facts(run.run_id))
        if found is not None and found.note != cost.NOT_BILLED:
            spent.setdefault(name, []).append(found)
            first[name] = min(first.get(name, run.started_at), run.started_at)
    if account is not None and account not in spent:
        spent[account] = []
    now = utc_now()
    rows = []
    for name, costs in sorted(spent.items(), key=lambda item: item[0] or ""):
        total, missing = cost.total(costs)
        since = first.get(name)
        note = (
            f"spent by hpcjob's runs of profile {ctx.profile.name} only"
            + (f", since {since[:10]}" if since else " (none has run)")
            + (f"; {missing} without an SBU rate" if missing else "")
            + f"; {why}"
        )
        row = _row(Budget(name, used_sbu=total), "ledger", now, note)
        rows.append({**row, "since": since, "runs": len(costs)})
    return rows


def budget_rows(ctx: Context, account: str | None, refresh: bool = False) -> list[dict[str, Any]]:
    """`hpcjob budget`: each account's budget as the cluster's tool says it (only `account`'s,
    when given), else what the ledger says was spent. Raises when the cluster cannot be asked
    or does not show the account."""
    if ctx.scheduler.jobs_run_here:
        return [_row(Budget(account), "none", utc_now(), HERE)]
    answer = ask_cluster(ctx, refresh=refresh)
    if answer is None:  # offline, nothing cached
        raise HpcjobError(f"There is no connection to {ctx.profile.get('host')}: {ctx.offline}.")
    if answer.tool is None or answer.unreadable:
        return ledger_rows(ctx, account, why=answer.unreadable or NOT_FOUND)
    budgets = answer.budgets
    if account is not None:
        mine = for_account(budgets, account)
        if mine is None:
            raise HpcjobError(
                f"{answer.tool} shows no account {account!r}; it shows: {_accounts(budgets)}.",
                hint="Give one of those with --account (or set `account` in the profile).",
            )
        budgets = [mine]
    return [_row(b, answer.tool, answer.checked_at) for b in budgets]


def _accounts(budgets: list[Budget]) -> str:
    return ", ".join(b.account or "(unnamed)" for b in budgets)


# -- the dry run's line and submit's warning --------------------------------------------------


def _sbu(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else cost.sbu_text(value)


def _checked(answer: ClusterAnswer) -> str:
    return f"{answer.tool}, checked {answer.checked_at[11:16]} UTC"


def budget_line(ctx: Context, estimate: cost.Cost, account: str | None) -> str:
    """The dry run's line: what is left on the job's account and what the job may cost."""
    if ctx.scheduler.jobs_run_here or estimate.note == cost.NOT_BILLED:
        return f"budget: {HERE}"
    job = f"this job ≤ {_sbu(estimate.sbu)} SBU" if estimate.sbu is not None else ""
    try:
        answer = ask_cluster(ctx)
    except HpcjobError as exc:
        return f"budget: not checked: {exc.message.splitlines()[0]}"
    if answer is None:
        return f"budget: not checked: no connection to {ctx.profile.get('host')}"
    if answer.tool is None or answer.unreadable:
        return _ledger_line(ctx, account, answer, job)
    mine = for_account(answer.budgets, account)
    if mine is None:
        shown = "; ".join(f"{b.account}: {_left(b)}" for b in answer.budgets)
        which = f"no account {account}" if account else "several accounts"
        return f"budget: {answer.tool} shows {which} ({shown}; {_checked(answer)})" + (
            f"; {job}" if job else ""
        )
    line = f"budget: {_left(mine)} on account {mine.account} ({_checked(answer)})"
    over = estimate.sbu is not None and mine.remaining_sbu is not None
    if over and estimate.sbu > mine.remaining_sbu:  # type: ignore[operator]
        job += " — more than is left (a submit warns, and goes on)"
    return line + (f"; {job}" if job else "")


def _left(budget: Budget) -> str:
    if budget.remaining_sbu is None:
        return "SBU left unknown"
    return f"{_sbu(budget.remaining_sbu)} SBU left"


def _ledger_line(ctx: Context, account: str | None, answer: ClusterAnswer, job: str) -> str:
    rows = ledger_rows(ctx, account, why=answer.unreadable or NOT_FOUND)
    used = sum(r["used_sbu"] or 0 for r in rows)
    firsts = [r["since"] for r in rows if r["since"]]
    since = f" since {min(firsts)[:10]}" if firsts else ""
    on = f" on account {account}" if account else ""
    line = (
        f"budget: unknown ({answer.unreadable or NOT_FOUND}); hpcjob's runs of profile "
        f"{ctx.profile.name} spent {_sbu(used)} SBU{on}{since}"
    )
    return line + (f"; {job}" if job else "")


def over_budget(ctx: Context, estimate: cost.Cost, account: str | None) -> str | None:
    """Submit's warning when the job may cost more than its account has left; None when it fits,
    nothing is known, or the cluster could not be asked (a note is added then)."""
    if estimate.sbu is None or ctx.scheduler.jobs_run_here:
        return None
    try:
        answer = ask_cluster(ctx)
    except HpcjobError as exc:
        ctx.notes.append(f"The budget was not checked: {exc.message.splitlines()[0]}")
        return None
    mine = for_account(answer.budgets, account) if answer is not None else None
    if answer is None or mine is None or mine.remaining_sbu is None:
        return None
    if estimate.sbu <= mine.remaining_sbu:
        return None
    return (
        f"This job may cost up to {_sbu(estimate.sbu)} SBU, more than the "
        f"{_sbu(mine.remaining_sbu)} SBU left on account {mine.account} ({_checked(answer)}). "
        f"It was submitted all the same: {answer.tool} lags behind (running jobs are not in it "
        "yet), and a job usually ends before its time limit. `hpcjob budget` shows the account."
    )
