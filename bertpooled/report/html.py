"""The comparison report as one self-contained HTML page: the same sections as report.md, plots embedded.

The page's prose and layout live in `templates/report.html` (a `string.Template`), so it reads like the
document it produces; this module only fills it. Plots are inlined as base64 PNGs, so the single file
opens anywhere, MLflow's artifact view included.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from pathlib import Path
from string import Template

from bertpooled.report.records import Report
from bertpooled.report.sections import sections as report_sections

TEMPLATE = Path(__file__).with_name("templates") / "report.html"
_NUMBER = re.compile(r"^[-+−]?[\d.,]+(×|%)?( \(cache\))?$|^<?0\.\d+$|^—$")


def render_html(report: Report, images: Mapping[str, Path]) -> str:
    """The report as HTML; `images` maps a caption to a PNG file to embed."""
    sections = []
    for section in report_sections(report):
        parts = [f"<h2>{html.escape(section.title)}</h2>"]
        parts += [f"<p>{html.escape(paragraph)}</p>" for paragraph in section.paragraphs]
        for headers, rows in section.tables:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
            body = "".join(
                "<tr>"
                + "".join(
                    f'<td class="num">{html.escape(c)}</td>' if _NUMBER.match(c) else f"<td>{html.escape(c)}</td>"
                    for c in row
                )
                + "</tr>"
                for row in rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if section.bullets:
            parts.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in section.bullets) + "</ul>")
        sections.append("\n".join(parts))
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(Path(path).read_bytes()).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for caption, path in images.items()
        if Path(path).is_file()
    )
    summary = (
        f"{len(report.runs)} run(s) in {len(report.groups)} group(s) by {', '.join(report.group_by)}; "
        f"baseline {report.baseline or 'none'}; α={report.alpha:g}"
    )
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        summary=html.escape(summary), figures=figures, sections="\n".join(sections)
    )
