"""tsctl's human-readable tables (the --json output is the data itself)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from scripts.operate.registry import version_key


def version_rows(model: str, default: str | None, versions: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for version in sorted(versions, key=version_key):
        entry = versions[version]
        states = Counter(worker.get("status", "?") for worker in entry.get("workers", []))
        rows.append([
            model, version, "*" if version == default else "",
            f"{states.get('READY', 0)}/{entry.get('minWorkers', '?')}-{entry.get('maxWorkers', '?')}",
            ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "no workers",
            str(entry.get("batchSize", "?")), f"{entry.get('maxBatchDelay', '?')} ms",
            ", ".join(sorted(set(entry.get("engines", {}).values()))) or "?",
        ])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


HEADER = ["MODEL", "VERSION", "DEFAULT", "READY/MIN-MAX", "WORKERS", "BATCH", "DELAY", "ENGINE"]


def show_status(models: dict[str, dict[str, Any]]) -> None:
    rows = [row for model, state in sorted(models.items())
            for row in version_rows(model, state["default"], state["versions"])]
    print(table(HEADER, rows) if rows else "no models registered")


def show_versions(model: str, state: dict[str, Any]) -> None:
    print(table(HEADER, version_rows(model, state["default"], state["versions"])))
    target = state.get("rollback_to")
    print(f"\nrollback would make {target} the default" if target else "\nnothing to roll back to")
