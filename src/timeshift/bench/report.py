"""What every benchmark writes: JSON (rows + environment), CSV and a Markdown table.

The environment record (CPU, cores, threads, GPU, library versions) travels with the numbers,
because on a shared machine a figure means little without the machine it came from.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["environment", "markdown_table", "write_report"]


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere the platform's own description
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # an optional package, absent or broken
        return None


def environment(device: str = "cpu") -> dict:
    """Hardware and versions, for the record next to the numbers."""
    from timeshift import __version__

    env = {
        "timeshift": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,d}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of ``columns`` (missing values as ``-``)."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    out: str | os.PathLike,
    name: str,
    rows: Sequence[dict],
    columns: Sequence[str],
    *,
    title: str,
    env: dict | None = None,
    extra: dict | None = None,
) -> dict[str, Path]:
    """Write ``name.json`` (title, environment, rows, extra), ``name.csv`` (all row keys) and
    ``name.md`` (title, environment line, ``columns`` table). Returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = env or environment()
    paths = {ext: out / f"{name}.{ext}" for ext in ("json", "csv", "md")}
    payload = {"title": title, "environment": env, "rows": list(rows), **(extra or {})}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    machine = (
        f"{env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} threads), "
        f"torch {env.get('torch')}" + (f", {env['gpu']}" if env.get("gpu") else "")
    )
    paths["md"].write_text(f"# {title}\n\n{machine}\n\n{markdown_table(rows, columns)}\n")
    return paths
