"""Build a slide deck from the figures that ``make run`` exported: one figure per slide, under the
title of the notebook and of the section it comes from.

    python3 scripts/make_slides.py                      # docs/figures/*.png -> docs/figures/slides.html
    python3 scripts/make_slides.py --figures F --notebooks notebooks --executed executed --out deck.html

``scripts/run_notebooks.py`` (``make run``, full mode) writes every figure a notebook shows to
``docs/figures/<notebook>-<cell>-<k>.png``; <cell> is the cell's index in the *executed* copy,
which has papermill's injected-parameters cell right after the ``parameters`` cell. Section titles
are the last markdown heading above the figure's cell: read from the executed copy
(``<executed>/<notebook>.ipynb``) when there is one, otherwise from ``<notebooks>/<notebook>.ipynb``
with that one-cell shift undone. The deck is one HTML file with relative links to the PNGs (open it
in a browser; arrow keys or Page Down move a slide; printing gives one slide per page). Plain
python3, standard library only: no venv needed.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

FIGURE = re.compile(r"^(?P<stem>.+)-(?P<cell>\d+)-(?P<k>\d+)\.png$")

CSS = """
html { scroll-snap-type: y mandatory; }
body { margin: 0; font-family: system-ui, sans-serif; background: #fff; color: #222; }
section { height: 100vh; box-sizing: border-box; padding: 2.5vh 4vw; scroll-snap-align: start;
          display: flex; flex-direction: column; page-break-after: always; break-after: page; }
section .nb { font-size: 1.6vh; color: #777; margin: 0; }
section h1 { font-size: 5vh; margin: auto 0 1vh; }
section h2 { font-size: 3.4vh; margin: 0.5vh 0 1.5vh; }
section .fig { flex: 1; min-height: 0; display: flex; align-items: center; justify-content: center; }
section img { max-width: 100%; max-height: 100%; object-fit: contain; }
section .src { font-size: 1.4vh; color: #999; margin: 0.5vh 0 0; text-align: right; }
section.title { justify-content: center; }
section.title p { font-size: 2.4vh; color: #555; }
@media print { section { height: 100vh; } }
"""

JS = """
document.addEventListener('keydown', e => {
  const s = [...document.querySelectorAll('section')];
  const i = s.findIndex(x => x.getBoundingClientRect().top > -5);
  const go = j => s[Math.max(0, Math.min(s.length - 1, j))].scrollIntoView();
  if (['ArrowRight', 'ArrowDown', 'PageDown', ' '].includes(e.key)) { e.preventDefault(); go(i + 1); }
  if (['ArrowLeft', 'ArrowUp', 'PageUp'].includes(e.key)) { e.preventDefault(); go(i - 1); }
});
"""


def _source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _headings(cell) -> list[tuple[int, str]]:
    """(level, text) of a markdown cell's headings, outside ``` fences."""
    out, fenced = [], False
    for line in _source(cell).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"(#{1,6})\s+(.*\S)", line)
        if m and not fenced:
            out.append((len(m.group(1)), m.group(2).strip()))
    return out


def _plain(title: str) -> str:
    """A heading as plain text: Markdown links, emphasis and code marks removed."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)
    return re.sub(r"[*_`]", "", title).strip()


def titles(cells: list[dict]) -> tuple[str, list[str]]:
    """The notebook's title (its first '# ' heading) and, for each cell, the last '##'/'###' heading
    at or above it ('' before the first section)."""
    nb_title, current, per_cell = "", "", []
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for level, text in _headings(cell):
                if level == 1 and not nb_title:
                    nb_title = _plain(text)
                elif level in (2, 3):
                    current = _plain(text)
        per_cell.append(current)
    return nb_title, per_cell


def _section_lookup(stem: str, notebooks: Path, executed: Path | None):
    """A function executed-cell-index -> section title, and the notebook's title."""
    if executed is not None and (executed / f"{stem}.ipynb").is_file():
        cells = json.loads((executed / f"{stem}.ipynb").read_text())["cells"]
        nb_title, per_cell = titles(cells)
        return nb_title, (lambda i: per_cell[min(i, len(per_cell) - 1)] if per_cell else "")
    path = notebooks / f"{stem}.ipynb"
    if not path.is_file():
        return stem, (lambda i: "")
    cells = json.loads(path.read_text())["cells"]
    nb_title, per_cell = titles(cells)
    params = next((j for j, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)

    def section(i: int) -> str:  # undo papermill's injected cell, inserted right after `parameters`
        j = i - 1 if params is not None and i > params + 1 else i
        return per_cell[min(j, len(per_cell) - 1)] if per_cell else ""
    return nb_title, section


def collect(figures: Path, notebooks: Path, executed: Path | None) -> list[dict]:
    """One entry per figure, in notebook order, then cell, then figure number."""
    found = []
    for png in figures.glob("*.png"):
        m = FIGURE.match(png.name)
        if m:
            found.append((m.group("stem"), int(m.group("cell")), int(m.group("k")), png))
    slides, lookups = [], {}
    for stem, cell, k, png in sorted(found, key=lambda t: (t[0], t[1], t[2])):
        if stem not in lookups:
            lookups[stem] = _section_lookup(stem, notebooks, executed)
        nb_title, section = lookups[stem]
        slides.append({"notebook": stem, "notebook_title": nb_title or stem, "section": section(cell),
                       "cell": cell, "k": k, "path": png})
    return slides


def render(slides: list[dict], out: Path, title: str = "pxpo-lite: figures from the notebooks") -> str:
    """The deck as one HTML page; image links are relative to ``out``'s folder."""
    parts = [f'<section class="title"><h1>{html.escape(title)}</h1>'
             f"<p>{len(slides)} figures from {len({s['notebook'] for s in slides})} notebooks "
             f"(made by scripts/make_slides.py from the figures of <code>make run</code>)</p></section>"]
    last = None
    for s in slides:
        if s["notebook"] != last:
            parts.append(f'<section class="title"><h1>{html.escape(s["notebook_title"])}</h1>'
                         f'<p>{html.escape(s["notebook"])}.ipynb</p></section>')
            last = s["notebook"]
        try:
            src = s["path"].resolve().relative_to(out.parent.resolve()).as_posix()
        except ValueError:
            src = s["path"].resolve().as_uri()
        parts.append(
            "<section>"
            f'<p class="nb">{html.escape(s["notebook_title"])}</p>'
            f'<h2>{html.escape(s["section"] or s["notebook_title"])}</h2>'
            f'<div class="fig"><img src="{html.escape(src, quote=True)}" alt="{html.escape(s["path"].name, quote=True)}"></div>'
            f'<p class="src">{html.escape(s["path"].name)}</p>'
            "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + f"\n<script>{JS}</script>\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"), help="the PNGs of `make run` (default docs/figures)")
    ap.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="the source notebooks (section titles)")
    ap.add_argument("--executed", type=Path, default=Path("executed"), help="make run's executed copies, if present")
    ap.add_argument("--out", type=Path, default=None, help="the deck (default <figures>/slides.html)")
    args = ap.parse_args(argv)
    out = args.out or args.figures / "slides.html"
    if not args.figures.is_dir():
        print(f"no folder {args.figures}: run `make run` first (it exports every figure there)", file=sys.stderr)
        return 1
    slides = collect(args.figures, args.notebooks, args.executed)
    if not slides:
        print(f"no <notebook>-<cell>-<k>.png figures in {args.figures}: run `make run` first", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(slides, out))
    print(f"{len(slides)} slides from {len({s['notebook'] for s in slides})} notebooks -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
