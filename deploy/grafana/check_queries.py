#!/usr/bin/env python3
"""Checks that every query of the Grafana dashboard is valid PromQL.

Each panel's targets[].expr (panels nested in collapsed rows included) has its Grafana
variables replaced ($__rate_interval and $__interval by 1m, $__range by 1h, a dashboard
variable by its current value, or by .* when it has none or it is "All"), and the
results are checked by `promtool check rules` on a temporary rules file with one
recording rule per query (record: check:q<N>). No Prometheus server is needed.

    check_queries.py [DASHBOARD]            check (default: orders-svc.json beside this file)
    check_queries.py --print [DASHBOARD]    print the substituted queries, one JSON object a line:
                                            {"panel": ..., "refId": ..., "expr": ...}

Exits 0 when every query parses, 1 otherwise. promtool comes from PATH or --promtool;
deploy/prometheus/check installs it when it is missing.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Grafana's built-in variables, longest names first so that $__range_ms is not read as
# $__range followed by "_ms".
BUILTINS = {
    "__rate_interval_ms": "60000",
    "__rate_interval": "1m",
    "__interval_ms": "60000",
    "__interval": "1m",
    "__range_ms": "3600000",
    "__range_s": "3600",
    "__range": "1h",
}

# ${name}, ${name:format}, [[name]], [[name:format]], $name
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def panels(dashboard):
    """Every panel, those nested in rows included, in dashboard order."""

    def walk(items):
        for panel in items or []:
            yield panel
            yield from walk(panel.get("panels"))

    yield from walk(dashboard.get("panels"))


def variable_values(dashboard):
    """Each dashboard variable's value for the check: its current value, or .* for "All",
    for none, and for variables whose values come from a query."""
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name")
        if not name:
            continue
        value = ".*"
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = current[0] if len(current) == 1 else None
        if var.get("type") in ("custom", "constant", "interval", "textbox") and current not in (None, "", "$__all"):
            value = str(current)
        values[name] = value
    return values


def substitute(expr, values):
    def replace(match):
        name = match.group(1) or match.group(2) or match.group(3)
        if name in BUILTINS:
            return BUILTINS[name]
        return values.get(name, ".*")

    # Built-ins written as $__name are matched by the longest name first.
    for name, value in BUILTINS.items():
        expr = re.sub(r"\$" + re.escape(name) + r"(?!\w)", value, expr)
        expr = expr.replace("${" + name + "}", value)
    return VARIABLE.sub(replace, expr)


def queries(dashboard):
    """(panel title, refId, substituted expr) for every target with an expr."""
    values = variable_values(dashboard)
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr is None:
                continue
            out.append((panel.get("title", ""), target.get("refId", ""), substitute(expr, values)))
    return out


def structure_problems(dashboard):
    problems = []
    ids = [p.get("id") for p in panels(dashboard)]
    duplicated = sorted({i for i in ids if ids.count(i) > 1 and i is not None})
    if duplicated:
        problems.append(f"panel ids used more than once: {duplicated}")
    for panel in panels(dashboard):
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {panel.get('title')!r} has no query")
        for target in targets:
            if not (target.get("expr") or "").strip():
                problems.append(f"panel {panel.get('title')!r}, target {target.get('refId')}: empty expr")
    return problems


def promtool_check(promtool, exprs):
    """Runs promtool check rules on one file holding every expr; returns (ok, output)."""
    rules = {"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"check:q{n}", "expr": expr} for n, expr in enumerate(exprs, 1)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        json.dump(rules, f, indent=1)  # JSON is YAML
        path = f.name
    try:
        run = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        return run.returncode == 0, (run.stdout + run.stderr).replace(path, "<queries>")
    finally:
        os.unlink(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dashboard", nargs="?", default=str(Path(__file__).resolve().with_name("orders-svc.json")))
    parser.add_argument("--print", action="store_true", dest="print_queries",
                        help="print the substituted queries as JSON lines instead of checking them")
    parser.add_argument("--promtool", default=None, help="promtool to run (default: from PATH)")
    args = parser.parse_args()

    with open(args.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)
    found = queries(dashboard)

    if args.print_queries:
        if hasattr(signal, "SIGPIPE"):
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quietly, into `| head`
        for title, ref, expr in found:
            print(json.dumps({"panel": title, "refId": ref, "expr": expr}, ensure_ascii=False))
        return 0

    problems = structure_problems(dashboard)
    if not found:
        problems.append("no queries found")
    leftover = [(t, r, e) for t, r, e in found if "$" in e or "[[" in e]
    for title, ref, expr in leftover:
        problems.append(f"panel {title!r}, target {ref}: a variable is left in {expr}")

    promtool = args.promtool or shutil.which("promtool")
    if not promtool:
        print("check_queries: no promtool on PATH (deploy/prometheus/check installs it)", file=sys.stderr)
        return 1

    ok, output = promtool_check(promtool, [expr for _, _, expr in found])
    if not ok:
        # Find the queries at fault, one by one.
        for n, (title, ref, expr) in enumerate(found, 1):
            one_ok, one_output = promtool_check(promtool, [expr])
            if not one_ok:
                problems.append(f"q{n} panel {title!r}, target {ref}: {expr}\n{one_output.strip()}")
        if not problems:
            problems.append(output.strip())

    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    panel_count = sum(1 for p in panels(dashboard) if p.get("type") != "row")
    verdict = "all valid" if not problems else f"{len(problems)} problem(s)"
    print(f"check_queries: {len(found)} queries in {panel_count} panels of {args.dashboard}: {verdict}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
