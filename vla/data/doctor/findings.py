"""What the doctor reports: findings with a severity, and how their lists of episodes and dimensions
are written."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.config.doctor import SEVERITIES

RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


@dataclass
class Finding:
    """One thing the doctor found. `check` names the check that found it (the report's glossary says
    what each means); `message` is a sentence with the numbers."""

    check: str
    severity: str
    """info: a fact worth knowing, never fails the run; warning: look at it; error: training on this
    data would go wrong or fail."""
    message: str
    episodes: list[str] = field(default_factory=list)
    """Every episode concerned (the message lists the first few)."""
    dims: list[str] = field(default_factory=list)
    """Every dimension concerned, as `action/<name>` or `state/<name>`."""

    def __post_init__(self) -> None:
        if self.severity not in RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")


def listed(items: list[str], limit: int) -> str:
    """`a, b, c` or `a, b, c (+7 more)`."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def worst(findings: list[Finding]) -> str | None:
    """The highest severity among `findings`, None when there are none."""
    return max((f.severity for f in findings), key=RANK.__getitem__, default=None)
