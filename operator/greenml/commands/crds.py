"""greenml crds: print or write the CRDs generated from the API models."""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("crds", help="print the CRD YAML (or write it to a folder)")
    p.add_argument("--output", "-o", metavar="DIR", help="write one file per CRD into DIR")
    p.add_argument("--check", metavar="DIR", help="exit 1 if the CRDs in DIR differ from the models")
    p.set_defaults(func=run)


def run(args) -> int:
    from greenml.api.crdgen import all_crds, render

    crds = {name: render(obj) for name, obj in all_crds().items()}
    if args.check:
        stale = [n for n, text in crds.items() if not (Path(args.check) / n).is_file()
                 or (Path(args.check) / n).read_text() != text]
        for n in stale:
            print(f"{Path(args.check) / n}: out of date; run `greenml crds -o {args.check}`")
        return 1 if stale else 0
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for n, text in crds.items():
            (out / n).write_text(text)
            print(out / n)
        return 0
    print("---\n".join(crds.values()), end="")
    return 0
