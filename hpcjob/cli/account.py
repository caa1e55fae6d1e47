"""Commands about the account jobs are billed to: `budget`.

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

from typing import Annotated, Any

import typer

from hpcjob.cli.options import JsonOpt, ProfileOpt
from hpcjob.cli.output import Sink, info, print_table
from hpcjob.cli.root import app, command
from hpcjob.cli.session import session

_BUDGET_COLUMNS = (
    ("account", "account"),
    ("remaining", "left"),
    ("initial", "granted"),
    ("used", "used"),
    ("valid_until", "valid until"),
)


@command(app)
def budget(
    account: Annotated[
        str | None,
        typer.Option("--account", "-A", help="Only this account (default: the profile's)."),
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Ask the cluster now, not the answer cached.")
    ] = False,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """SBU left on your accounts (the cluster's accinfo / budget-overview; where neither exists,
    what hpcjob's own runs spent, from the ledger)."""
    from rich.markup import escape

    from hpcjob.insight.budget import budget_rows

    sink = Sink(json_out)
    with session(profile) as context:
        chosen = account or context.profile.get("account") or None
        rows = budget_rows(context, chosen, refresh=refresh)

        def show() -> None:
            title = f"SBU budget of profile {context.profile.name}"
            shown = [_shown(r) for r in rows]
            print_table(shown, columns=_BUDGET_COLUMNS, title=title, fit="account")
            for said in dict.fromkeys(_said(r) for r in rows):
                info(escape(said))

        sink.result(rows, show)


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A row's amounts as a person reads them (`87,655`; --json has them exact); unknown: `-`."""

    def amount(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:g}"

    return {
        **row,
        "account": row["account"] or "(default)",
        "remaining": amount(row["remaining_sbu"]),
        "initial": amount(row["initial_sbu"]),
        "used": amount(row["used_sbu"]),
    }


def _said(row: dict[str, Any]) -> str:
    """Where a row's numbers come from, said under the table."""
    if row["note"]:
        return str(row["note"])
    return f"From {row['source']} on the login node, checked {row['checked_at'][11:16]} UTC."
