"""An account's SBU budget as the cluster's own tools say it (pure): the one command that asks
them on the login node, and a tolerant reader of what they print.

SURF's `accinfo` prints `Key : value` lines per account (Account, Initial budget, Consumed
budget, Remaining budget, Valid until, Last update); `budget-overview` prints a table with a row
per account. Their exact output was never recorded (tests/fixtures/budget/README.md), so the
reader matches keys loosely (remaining/left, initial/granted/total, used/consumed/spent), reads
`1,000,000`, `12345.5` and `50000:00` (SBU:minutes), ignores lines it does not know, and returns
None — never raises — when nothing can be read. A number it cannot read (negative, `1.000.000`,
absurdly large) is left unknown rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

TOOLS = ("accinfo", "budget-overview")
MAX_TEXT = 256 * 1024  # what is read of a tool's output at most
MAX_LINE = 1000  # a longer line is no budget line: skipped
MAX_SBU = 1e12  # no account holds more; a bigger number is garbage
_MARK = "@@hpcjob-budget"


@dataclass(frozen=True)
class Budget:
    """One account's budget in SBU; any number may be unknown."""

    account: str | None
    remaining_sbu: float | None = None
    initial_sbu: float | None = None
    used_sbu: float | None = None
    valid_until: str | None = None
    last_update: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def known(self) -> bool:
        return any(v is not None for v in (self.remaining_sbu, self.initial_sbu, self.used_sbu))


# -- the one command --------------------------------------------------------------------------

# Tools are looked for on the PATH of the shell that runs this: over SSH a login shell (SSHShell
# runs every command with `bash -lc`, so /etc/profile and ~/.profile's ~/bin count), on the
# login node itself the user's own. The first tool that is there and exits 0 answers; a missing
# one costs nothing, since both are asked in this one command.
_PROBE = f"""for tool in {" ".join(TOOLS)}; do
  command -v "$tool" >/dev/null 2>&1 || continue
  printf '\\n{_MARK}-begin %s\\n' "$tool"
  "$tool" </dev/null 2>&1 | head -c {MAX_TEXT}
  rc=${{PIPESTATUS[0]}}
  printf '\\n{_MARK}-end %s %s\\n' "$tool" "$rc"
  [ "$rc" = 0 ] && exit 0
done
exit 0"""


def probe_argv() -> list[str]:
    """One command on the login node: accinfo, else budget-overview, each only if it exists."""
    return ["bash", "-c", _PROBE]


@dataclass(frozen=True)
class Answer:
    """One tool's answer: its name, exit status (None: cut off) and output."""

    tool: str
    returncode: int | None = None
    text: str = ""


def split_probe(stdout: str) -> list[Answer]:
    """Each tool's output between the probe's markers, in the order asked (a login shell's own
    chatter, from /etc/profile or ~/.bashrc, is outside them); [] when neither tool exists."""
    found = []
    begin = re.compile(rf"^{_MARK}-begin ([\w-]+)$", re.MULTILINE)
    for start in begin.finditer(stdout):
        tool = start.group(1)
        end = re.compile(rf"^{_MARK}-end {re.escape(tool)} (\d+)$", re.MULTILINE)
        stop = end.search(stdout, start.end())
        text = stdout[start.end() : stop.start() if stop else None]
        code = int(stop.group(1)) if stop else None
        found.append(Answer(tool, code, text.strip("\n")))
    return found


# -- numbers ----------------------------------------------------------------------------------

_UNIT_RE = re.compile(r"\s*(?:sbus?|sbu[- ]?hours?|hours?|h)\.?$", re.IGNORECASE)
_PLAIN_RE = re.compile(r"-?\d{1,15}(?:\.\d{1,6})?")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3}){1,5}(?:\.\d{1,6})?")
_MINUTES_RE = re.compile(r"(-?)(\d{1,3}(?:,\d{3}){1,5}|\d{1,15}):([0-5]\d)")


def parse_sbu(text: str) -> float | None:
    """`1,000,000`, `12345.5`, `50000:00` (SBU and minutes: `90:30` is 90.5), with or without an
    `SBU` after it; None for anything else — negative, `1.000.000`, `1e9`, above MAX_SBU."""
    value = _UNIT_RE.sub("", text.strip()).strip()
    if len(value) > 40:
        return None
    number: float | None = None
    if _PLAIN_RE.fullmatch(value) or _THOUSANDS_RE.fullmatch(value):
        number = float(value.replace(",", ""))
    elif minutes := _MINUTES_RE.fullmatch(value):
        sign, whole, mins = minutes.groups()
        number = float(whole.replace(",", "")) + int(mins) / 60
        number = -number if sign else number
    if number is None or number < 0 or number > MAX_SBU:
        return None
    return round(number, 2)


# -- keys -------------------------------------------------------------------------------------

_FIELDS = (  # (field, words that name it); the first field whose word a key holds wins
    ("remaining_sbu", ("remaining", "left", "available", "balance")),
    ("used_sbu", ("consumed", "used", "spent", "usage")),
    ("initial_sbu", ("initial", "granted", "total", "allocated", "budget")),
    ("valid_until", ("valid until", "valid to", "expires", "end date", "until")),
    ("last_update", ("last update", "updated", "last change")),
    ("account", ("account", "project")),
)
_NOT_NUMBERS = ("valid", "date", "from", "start", "description", "name", "login", "email")
_FIELD_RES = [(name, re.compile(rf"\b(?:{'|'.join(names)})\b")) for name, names in _FIELDS]
_NOT_NUMBER_RE = re.compile(rf"\b(?:{'|'.join(_NOT_NUMBERS)})\b")


def field_of(key: str) -> str | None:
    """Which Budget field a key (`Remaining budget`, `SBU left`, `Initial (SBU)`) names."""
    words = " ".join(re.findall(r"[a-z]+", key.lower()))
    if not words:
        return None
    for name, pattern in _FIELD_RES:
        if pattern.search(words):
            if name.endswith("_sbu") and _NOT_NUMBER_RE.search(words):
                continue  # `Valid from`, `Budget name`: not an amount
            return name
    return None


def _word(value: str) -> str | None:
    """An account name or a date as shown: printable, bounded; None when empty or odd."""
    value = value.strip()
    if not value or len(value) > 64 or not value.isprintable():
        return None
    return value


def _set(fields: dict[str, Any], name: str, value: str) -> None:
    if name.endswith("_sbu"):
        fields[name] = parse_sbu(value)
    else:
        fields[name] = _word(value)


def _budget(fields: dict[str, Any]) -> Budget:
    budget = Budget(**{"account": None, **fields})
    if (
        "remaining_sbu" not in fields
        and budget.initial_sbu is not None
        and budget.used_sbu is not None
        and budget.initial_sbu >= budget.used_sbu
    ):
        budget = replace(budget, remaining_sbu=round(budget.initial_sbu - budget.used_sbu, 2))
    return budget


# -- `Key : value` lines (accinfo) ------------------------------------------------------------

_PAIR_RE = re.compile(r"\s*([A-Za-z][A-Za-z ()/_.-]{0,60}?)\s*[:=]\s*(\S.*)")


def _lines(text: str) -> list[str]:
    return [line for line in text[:MAX_TEXT].splitlines() if len(line) <= MAX_LINE]


def parse_pairs(text: str) -> list[Budget] | None:
    """`Key : value` lines, one block per account (a second `Account` starts the next block);
    None when no line held a budget number."""
    blocks: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in _lines(text):
        pair = _PAIR_RE.fullmatch(line)
        name = field_of(pair.group(1)) if pair else None
        if pair is None or name is None:
            continue
        if name == "account" and "account" in current:
            blocks.append(current)
            current = {}
        if name not in current:  # the first `Budget`-ish key of a block names its amount
            _set(current, name, pair.group(2).strip())
    blocks.append(current)
    found = [_budget(b) for b in blocks if b]
    return [b for b in found if b.known] or None


# -- a table (budget-overview) ----------------------------------------------------------------

_RULE_RE = re.compile(r"[\s|+=-]*")


def _cells(line: str) -> list[str]:
    if "|" in line:
        return [c.strip() for c in line.strip().strip("|").split("|")]
    return re.split(r"\s{2,}|\t", line.strip())


def parse_table(text: str) -> list[Budget] | None:
    """A table whose header names an account column and at least one amount; a row per
    account. Rows whose cells do not line up with the header are skipped."""
    lines = _lines(text)
    for index, line in enumerate(lines):
        header = [field_of(cell) for cell in _cells(line)]
        if "account" not in header or not any(h and h.endswith("_sbu") for h in header):
            continue
        found = []
        for row in lines[index + 1 :]:
            cells = _cells(row)
            if _RULE_RE.fullmatch(row) or len(cells) != len(header):
                continue
            fields: dict[str, Any] = {}
            for name, cell in zip(header, cells, strict=True):
                if name is not None and name not in fields:
                    _set(fields, name, cell)
            budget = _budget(fields)
            if budget.account and budget.known:
                found.append(budget)
        return found or None
    return None


def parse_budget(text: str) -> list[Budget] | None:
    """Every account's budget that `text` shows (`Key : value` lines or a table); None when
    nothing can be read. Never raises."""
    return parse_pairs(text) or parse_table(text)


def for_account(budgets: list[Budget], account: str | None) -> Budget | None:
    """The budget of `account`; without one, the only budget there is. A block that names no
    account stands for the account asked only when it is the only one."""
    if account is None:
        return budgets[0] if len(budgets) == 1 else None
    named = [b for b in budgets if b.account is not None and b.account.lower() == account.lower()]
    if named:
        return named[0]
    if len(budgets) == 1 and budgets[0].account is None:
        return replace(budgets[0], account=account)
    return None
