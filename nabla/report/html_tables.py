"""A committed result table (Markdown, or the tuning selection's YAML) as a small standalone HTML page.

The Snakemake report shows HTML results in a frame; these pages are what it shows for the tables
of results/ (workflow/rules/html_report.smk). The Markdown is the subset the workflow writes:
``#`` headings, paragraphs, bullet lists, code blocks and pipe tables with their column alignment,
and inline code, bold and links. No dependency beyond PyYAML; the same input gives the same bytes.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 13px;
       color: #1e293b; margin: 12px 16px; }
h1 { font-size: 16px; margin: 0 0 4px 0; }
h2, h3, h4 { font-size: 14px; margin: 18px 0 6px 0; }
p.source { color: #64748b; margin: 0 0 10px 0; font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 14px 0; }
th, td { border: 1px solid #cbd5e1; padding: 2px 7px; white-space: nowrap; }
th { background: #f1f5f9; position: sticky; top: 0; }
tr:nth-child(even) td { background: #f8fafc; }
td.num { font-variant-numeric: tabular-nums; }
pre { background: #f8fafc; border: 1px solid #e2e8f0; padding: 8px; font-size: 12px; overflow: auto; }
code { background: #f1f5f9; padding: 0 2px; }
"""

_SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_NUMBER = re.compile(r"^[-+−]?\d[\d,.]*(e[-+]?\d+)?( ± .*)?[%×]?$")


def _inline(text: str) -> str:
    """Escaped text with `code`, **bold** and [links](url)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)",  # the URL is escaped already, but for its quotes
                  lambda m: f'<a href="{m.group(2).replace(chr(34), "&quot;")}" target="_blank">{m.group(1)}</a>', out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)]


def _alignment(spec: str) -> str | None:
    spec = spec.strip()
    if spec.startswith(":") and spec.endswith(":"):
        return "center"
    return "right" if spec.endswith(":") else "left" if spec.startswith(":") else None


def _table(lines: list[str]) -> str:
    header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    align = [_alignment(spec) for spec in _cells(lines[1])]

    def cell(tag: str, text: str, column: int) -> str:
        a = align[column] if column < len(align) else None
        attrs = f' style="text-align: {a}"' if a else ""
        if tag == "td" and _NUMBER.match(text):
            attrs += ' class="num"'
        return f"<{tag}{attrs}>{_inline(text)}</{tag}>"

    head = "".join(cell("th", text, i) for i, text in enumerate(header))
    body = "\n".join("<tr>" + "".join(cell("td", text, i) for i, text in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def markdown_to_html(text: str) -> str:
    """The workflow's Markdown (headings, paragraphs, lists, pipe tables) as an HTML fragment."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):  # a fenced code block
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(f"<pre>{html.escape(chr(10).join(lines[i + 1:j]))}</pre>")
            i = j + 1
        elif line.startswith(("    ", "\t")):  # an indented code block
            j = i
            while j < len(lines) and (lines[j].startswith(("    ", "\t")) or not lines[j].strip()):
                j += 1
            code = [line[4:] if line.startswith("    ") else line.lstrip("\t") for line in lines[i:j]]
            out.append(f"<pre>{html.escape(chr(10).join(code).strip(chr(10)))}</pre>")
            i = j
        elif heading := re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line):
            level = min(len(heading.group(1)) + 1, 6)  # the page's own title is the h1
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
        elif re.match(r"^\s*[-*]\s+", line):
            items = []
            while i < len(lines) and lines[i].strip():
                if item := re.match(r"^\s*[-*]\s+(.*)", lines[i]):
                    items.append(item.group(1))
                else:  # a continuation line of the item before
                    items[-1] += " " + lines[i].strip()
                i += 1
            out.append("<ul>\n" + "\n".join(f"<li>{_inline(item)}</li>" for item in items) + "\n</ul>")
        else:
            paragraph = []
            while (i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(("|", "#", "```"))
                   and not re.match(r"^\s*[-*]\s+", lines[i])):
                paragraph.append(lines[i].strip())
                i += 1
            if not paragraph:  # a lone table row without its separator: show it as text
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def _value(value) -> str:
    """A YAML value as a Markdown table cell."""
    return (f"{value:.6g}" if isinstance(value, float) else str(value)).replace("|", "\\|")


def _settings(settings: dict | None) -> str:
    return ", ".join(f"{key} = {_value(value)}" for key, value in (settings or {}).items()) or "–"


def selection_to_html(text: str) -> str:
    """selected.yaml (nabla.protocol's selection): the rule, the levels and each method's chosen
    grid point as tables, then the file itself."""
    import yaml

    selection = yaml.safe_load(text) or {}
    out = []
    if "rule" in selection:
        out.append(f"<p><strong>Rule:</strong> {_inline(str(selection['rule']))}</p>")
    rewards = selection.get("rewards") or {}
    level_rows, method_rows = [], []
    for reward, entry in rewards.items():
        levels = entry.get("levels") or {}
        level_rows.append("| " + " | ".join([reward] + [_value(levels.get(k, "–")) for k in
                                                         ("prior_reward", "reference_reward", "level_reward")]) + " |")
        for method, chosen in (entry.get("methods") or {}).items():
            edges = ", ".join(f"{k}: {v}" for k, v in (chosen.get("edges") or {}).items()) or "–"
            method_rows.append(f"| {reward} | {method} | {_value(chosen.get('point', '–'))} | "
                               f"{_settings(chosen.get('settings'))} | {_value(chosen.get('why', '–'))} | "
                               f"{_value(edges)} |")
    if level_rows:
        out.append(f"<h2>Levels (matched fraction {_value(selection.get('level', '–'))})</h2>")
        out.append(markdown_to_html("| reward | prior reward | reference reward | level reward |\n|---|--:|--:|--:|\n"
                                    + "\n".join(level_rows)))
    if method_rows:
        out.append("<h2>Selected grid point per reward and method</h2>")
        out.append(markdown_to_html("| reward | method | point | settings | why | where in its grid |\n"
                                    "|---|---|---|---|---|---|\n" + "\n".join(method_rows)))
    out.append(f"<details><summary>The whole file</summary><pre>{html.escape(text)}</pre></details>")
    return "\n".join(out)


TITLES = {  # a table file's stem → what it holds
    "table": "end of budget",
    "matched": "at matched reward",
    "selected": "tuning selection",
    "exactness": "exactness floor",
    "prior_quality": "prior quality per prompt word",
    "bench": "cost per update",
    "claims": "claims",
    "README": "about this set",
}


def title_of(relative: str | Path) -> str:
    """A table's page title from its path under results/: `tiny · release protocol · end of budget`."""
    parts = Path(relative).with_suffix("").parts
    name = TITLES.get(parts[-1], parts[-1].replace("_", " "))
    return " · ".join([parts[0]] + [f"{p} protocol" for p in parts[1:-1]] + [name])


def table_page(source: str | Path, title: str | None = None) -> str:
    """A whole HTML page of a committed table file: Markdown, or a selection YAML."""
    source = Path(source)
    text = source.read_text(encoding="utf-8")
    body = selection_to_html(text) if source.suffix in (".yaml", ".yml") else markdown_to_html(text)
    title = title or source.stem
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f'<p class="source">{html.escape(source.as_posix())}, as committed</p>\n{body}\n</body>\n</html>\n')


def page_path(source: str | Path, root: str | Path, out: str | Path) -> Path:
    """Where a table's page goes: results/tiny/release/table.md → <out>/tiny/release/table.html."""
    return Path(out) / Path(source).relative_to(root).with_suffix(".html")


def write_table_pages(sources: list[str | Path], root: str | Path, out: str | Path) -> list[Path]:
    """Each table file under `root` rendered to its page under `out` (page_path); the pages written."""
    written = []
    for source in sources:
        page = page_path(source, root, out)
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(table_page(source, title_of(Path(source).relative_to(root))), encoding="utf-8")
        written.append(page)
    return written
