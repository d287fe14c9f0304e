"""Execute notebooks headless with papermill and keep the executed copies (with figures).

    python scripts/run_notebooks.py --out executed notebooks/*.ipynb          # full mode
    python scripts/run_notebooks.py --smoke --out executed/smoke notebooks/*.ipynb

Prints each notebook's wall time and the results it recorded (pxpo_lite.results.record);
writes them all to <out>/results.json. Exits non-zero if a notebook fails (its error is shown).
In full mode every figure a notebook shows is also exported, slide-ready, as
``docs/figures/<notebook>-<cell>-<k>.png`` (``--figures DIR`` to change, ``--figures ''`` to skip);
COURSE.md points instructors there.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path


def export_figures(executed: Path, folder: Path) -> list[Path]:
    """Write every PNG output of an executed notebook to ``folder/<stem>-<cell>-<k>.png``; returns the paths."""
    nb = json.loads(executed.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, cell in enumerate(nb.get("cells", [])):
        k = 0
        for o in cell.get("outputs", []):
            png = o.get("data", {}).get("image/png")
            if png:
                path = folder / f"{executed.stem}-{i:02d}-{k}.png"
                path.write_bytes(base64.b64decode(png if isinstance(png, str) else "".join(png)))
                written.append(path)
                k += 1
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("executed"))
    ap.add_argument("--smoke", action="store_true", help="run with SMOKE=True")
    ap.add_argument("--kernel", default="pxpo-lite")
    ap.add_argument("--figures", default=None,
                    help="export figures here (default: docs/figures in full mode, nothing in smoke mode; '' to skip)")
    ap.add_argument("-p", "--param", action="append", default=[], help="extra parameter NAME=VALUE (JSON value)")
    args = ap.parse_args()

    import papermill

    from pxpo_lite.results import read_results

    params = {"SMOKE": args.smoke}
    for kv in args.param:
        k, v = kv.split("=", 1)
        params[k] = json.loads(v)
    args.out.mkdir(parents=True, exist_ok=True)
    summary, failed = {}, []
    for nb in args.notebooks:
        out = args.out / nb.name
        print(f"== {nb.name} ({'smoke' if args.smoke else 'full'} mode)", flush=True)
        t = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(out), parameters=params, kernel_name=args.kernel, cwd=str(nb.parent), progress_bar=False)
        except Exception as e:  # keep going: report every failing notebook
            failed.append(nb.name)
            print(f"!! {nb.name} failed: {e}", file=sys.stderr)
            continue
        secs = time.perf_counter() - t
        results = read_results(out)
        summary[nb.name] = {"seconds": round(secs, 1), "results": results}
        print(f"   {secs:.1f} s; recorded: {', '.join(results) or '(nothing)'}", flush=True)
        figures = args.figures if args.figures is not None else ("" if args.smoke else "docs/figures")
        if figures:
            print(f"   {len(export_figures(out, Path(figures)))} figure(s) exported to {figures}/", flush=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"executed copies and results.json in {args.out}/")
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
