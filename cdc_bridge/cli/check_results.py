"""One check's outcome, as ``cdc-bridge check`` prints it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "FAIL", "skip"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: str  # a stable name, e.g. "postgres.wal_level"
    status: Status
    detail: str
    fix: str | None = None

    def document(self) -> dict[str, object]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}


def ok(check: str, detail: str) -> CheckResult:
    return CheckResult(check, "ok", detail)


def warn(check: str, detail: str, fix: str | None = None) -> CheckResult:
    return CheckResult(check, "warn", detail, fix)


def fail(check: str, detail: str, fix: str | None = None) -> CheckResult:
    return CheckResult(check, "FAIL", detail, fix)


def skip(check: str, why: str) -> CheckResult:
    return CheckResult(check, "skip", why)
