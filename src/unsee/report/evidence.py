"""The evidence a person reads after a removal request: ``evidence.html``, its figure and ``report.md``.

Numbers alone do not convince whoever asked for a person to be forgotten; seeing each held-out
photo beside what the model answered before and after does. The page shows every held-out photo
of the forget people and a sample of retained people (labelled, so that a reader sees the
model still names them), then the figures, the audits and the cost. Photos are copied next
to the page as PNG files, so the folder can be handed over as it is.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsee.data.request import one_form
from unsee.data.schema import rgb
from unsee.eval.metrics import COUNT_KEYS
from unsee.io import atomic_write_bytes, atomic_write_text
from unsee.report.card import METRIC_KEYS, verdict
from unsee.report.tables import DASH, MIB, ordered_groups, render_report

# Marks the page with how many of its images loaded, so that a headless browser can check it.
CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
</script>"""

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:middle;
overflow-wrap:anywhere;max-width:320px}
th{background:#f3f3f3}img.photo{width:96px;height:96px;image-rendering:pixelated}
.forget{background:#fde8e8;color:#9b1c1c}.retain{background:#e6f4ea;color:#1e6b34}
.tag{font-weight:bold;padding:2px 6px;border-radius:4px;font-size:.85em}.verdict{font-size:1.1em}
td.named{font-weight:bold}"""


@dataclass
class Shown:
    """One photo on the page: whose, which role, the question, and the answers before and after."""

    role: str
    name: str
    question: str
    photo: bytes
    source: str
    before: str
    after: str
    aliases: tuple[str, ...] = ()
    held_out: bool = True  # False: a photo unlearning read (a person given no held-out photo)

    def names_them(self, answer: str) -> bool:
        """A name, as a whole word: "Ed" is not named by "red hair", nor "Ian" by "Brian" (scripts written
        without spaces, such as Chinese, have no words to keep whole)."""
        answer = one_form(answer)  # a tokenizer that composes accents, or one that does not: the same name
        return any(re.search(rf"(?<!{_LETTER}){re.escape(one_form(a))}(?!{_LETTER})", answer, re.IGNORECASE)
                   for a in (self.aliases or (self.name,)) if a)


_LETTER = r"[^\W\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]"  # a word character of a script with spaces


def _png(data: bytes) -> bytes:
    """Any photo Pillow reads, as PNG, so that every browser shows it."""
    from PIL import Image

    buf = io.BytesIO()
    rgb(Image.open(io.BytesIO(data))).save(buf, format="PNG")
    return buf.getvalue()


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else _e(x)


def _photo_rows(shown: Sequence[tuple[int, Shown]], folder: str) -> list[str]:
    """Table rows of some of the page's photos, each with its index among all of them (its file's name)."""
    rows = ["<table><tr><th>photo</th><th>role</th><th>person</th><th>question</th><th>before</th>"
            "<th>after</th><th>named after?</th></tr>"]
    for i, s in shown:
        named = s.names_them(s.after)
        rows.append(
            f'<tr><td><img class="photo" src="{folder}/{i:03d}.png" alt="{_e(s.role)} photo {i}" '
            f'title="{_e(s.source)}"></td><td><span class="tag {s.role}">{s.role.upper()}</span></td>'
            f"<td>{_e(s.name)}</td><td>{_e(s.question)}</td><td>{_e(s.before)}</td><td>{_e(s.after)}</td>"
            f'<td class="{"named" if named else ""}">{"yes" if named else "no"}</td></tr>')
    rows.append("</table>")
    return rows


def _metric_table(run: Mapping[str, Any], vanilla: Mapping[str, Any] | None) -> list[str]:
    rows = ["<table><tr><th>group</th><th>figure</th><th>before</th><th>after</th><th>n</th></tr>"]
    for g in ordered_groups([r for r in (vanilla, run) if r is not None]):
        a = run["metrics"].get(g, {})
        b = (vanilla or {}).get("metrics", {}).get(g, {})
        for key in METRIC_KEYS:
            if key in a or key in b:
                n = a.get(COUNT_KEYS.get(key, "n"), b.get(COUNT_KEYS.get(key, "n"), DASH))
                rows.append(f"<tr><td>{_e(g)}</td><td>{key}</td><td>{_num(b.get(key, DASH))}</td>"
                            f"<td>{_num(a.get(key, DASH))}</td><td>{_e(n)}</td></tr>")
    rows.append("</table>")
    return rows


def _audit_table(audits: Mapping[str, Any]) -> list[str]:
    rows = ["<table><tr><th>audit</th><th>figure</th><th>value</th></tr>"]
    for kind, figures in audits.items():
        for key, value in (figures or {}).items():
            if isinstance(value, int | float | str) and not isinstance(value, bool):
                rows.append(f"<tr><td>{_e(kind)}</td><td>{_e(key)}</td><td>{_num(value)}</td></tr>")
    rows.append("</table>")
    return rows


def plot_evidence(run: Mapping[str, Any], vanilla: Mapping[str, Any] | None, path: Path) -> Path:
    """Two panels: each group's headline figure before and after, and the audits' forget accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in ordered_groups([run]) if "mcq" in run["metrics"][g]]
    audits = run.get("attacks") or {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    x = range(len(groups))
    before = [(vanilla or {}).get("metrics", {}).get(g, {}).get("mcq", 0.0) for g in groups]
    after = [run["metrics"][g]["mcq"] for g in groups]
    ax1.bar([i - 0.2 for i in x], before, width=0.4, label="before", color="#888")
    ax1.bar([i + 0.2 for i in x], after, width=0.4, label="after", color="#c0392b")
    ax1.set_xticks(list(x), groups, rotation=30, ha="right", fontsize=8)
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("MCQ accuracy")
    ax1.set_title("before and after unlearning", fontsize=9)
    ax1.legend(fontsize=8)
    bars: list[tuple[str, float]] = []
    relearn, pgd = audits.get("relearn") or {}, audits.get("pgd") or {}
    for label, value in (("relearn: unseen before", relearn.get("unseen_before")),
                         ("relearn: unseen after", relearn.get("unseen_after")),
                         ("PGD: forget clean", pgd.get("forget_clean")),
                         ("PGD: forget attacked", pgd.get("forget_attacked")),
                         ("probe: forget", (audits.get("probe") or {}).get("forget_acc"))):
        if isinstance(value, int | float):
            bars.append((label, float(value)))
    if bars:
        ax2.barh([b[0] for b in bars], [b[1] for b in bars], color="#2c7fb8")
        ax2.set_xlim(0, 1.05)
        ax2.set_title("audits: forget accuracy under attack", fontsize=9)
        ax2.tick_params(labelsize=8)
    else:
        ax2.text(0.5, 0.5, "no audits were run", ha="center", va="center")
        ax2.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_evidence(out: Path, *, shown: Sequence[Shown], results: Mapping[str, Any], run: Mapping[str, Any],
                   vanilla: Mapping[str, Any] | None, request: Mapping[str, Any], cost: Mapping[str, Any]) -> Path:
    """``out/evidence.html`` with its photos and figure under ``out/evidence/``, and ``out/report.md``."""
    folder = "evidence"
    for i, s in enumerate(shown):
        atomic_write_bytes(out / folder / f"{i:03d}.png", _png(s.photo))
    plot_evidence(run, vanilla, out / folder / "figures.png")
    audits, spent = run.get("attacks") or {}, _unlearning(run, cost)
    line = verdict(run, vanilla, audits).replace("**Verdict:**", "").strip()
    people = ", ".join(request["names"])
    held = [(i, s) for i, s in enumerate(shown) if s.role == "forget" and s.held_out]
    seen = [(i, s) for i, s in enumerate(shown) if s.role == "forget" and not s.held_out]
    retain = [(i, s) for i, s in enumerate(shown) if s.role == "retain"]
    page = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>unsee: removal request {_e(', '.join(request['files']))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Removal request: {_e(people)}</h1>",
        f'<p class="verdict"><b>Verdict:</b> {_e(line)}</p>',
        f"<p>Request {_e(', '.join(request['files']))}; method <code>{_e(run['method'])}</code>, seed "
        f"{_e(run['seed'])}. The answers are the model's free replies to the question, before and after "
        "unlearning.</p>",
        f"<h2>People to forget: every held-out photo ({len(held)})</h2>",
        *(_photo_rows(held, folder) if held else ["<p>No held-out photos were given.</p>"]),
        *([f"<h2>People to forget without held-out photos: the photos unlearning trained on ({len(seen)})</h2>",
           "<p>These say how well the method fit its own training photos, not whether it reaches other photos "
           "of the person: give <code>held_out</code> photos for that.</p>", *_photo_rows(seen, folder)]
          if seen else []),
        f"<h2>Retained people: a sample ({len(retain)})</h2>",
        *(_photo_rows(retain, folder) if retain else ["<p>No named retained people.</p>"]),
        "<h2>Figures</h2>",
        f'<p><img src="{folder}/figures.png" alt="figures before and after, and the audits" '
        'style="max-width:100%"></p>',
        *_metric_table(run, vanilla),
        "<h2>Audits</h2>",
        *(_audit_table(audits) if audits else ["<p>No audits were run.</p>"]),
        "<h2>Cost</h2>",
        "<table>",
        f"<tr><td>unlearning wall time{_over(spent)}</td><td>{float(spent['wall_s']):.1f} s</td></tr>",
        f"<tr><td>whole command (evaluation and audits included)</td><td>{float(cost['total_wall_s']):.1f} s"
        "</td></tr>",
        f"<tr><td>peak resident memory</td><td>{spent['peak_rss_bytes'] / MIB:,.0f} MiB</td></tr>",
        f"<tr><td>trainable parameters</td><td>{int(spent['trainable_params']):,}</td></tr>",
        "</table>",
        CHECK_SCRIPT,
        "</body></html>",
    ]
    atomic_write_text(out / "evidence.html", "\n".join(page) + "\n")
    _write_report(out, shown=shown, results=results, run=run, vanilla=vanilla, request=request, cost=cost)
    return out / "evidence.html"


FIGURES = "![figures](evidence/figures.png)\n"  # where report.md's own lines end and the results' tables begin


def refresh_evidence(out: Path, results: Mapping[str, Any], run: Mapping[str, Any],
                     vanilla: Mapping[str, Any] | None) -> None:
    """What ``out``'s evidence says of the audits, again, once ``unsee attack`` has added some: its verdict,
    figure and audit table, and report.md's verdict and tables. The photos and answers stay as written.
    Left as they were, they said no audit was run beside a card and results that hold them."""
    audits = run.get("attacks") or {}
    line = verdict(run, vanilla, audits)
    plot_evidence(run, vanilla, out / "evidence" / "figures.png")
    head, marker, _ = (out / "report.md").read_text().partition(FIGURES)
    if marker:  # a report edited by hand keeps its own words
        head = re.sub(r"^\*\*Verdict:\*\*.*$", lambda _: line, head, count=1, flags=re.M)
        atomic_write_text(out / "report.md", head + marker + render_report(results).split("\n", 1)[1])
    page = (out / "evidence.html").read_text()
    said = line.replace("**Verdict:**", "").strip()
    page = re.sub(r'<p class="verdict">.*?</p>', lambda _: f'<p class="verdict"><b>Verdict:</b> {_e(said)}</p>',
                  page, count=1)
    table = "\n".join(_audit_table(audits) if audits else ["<p>No audits were run.</p>"])
    page = re.sub(r"(?s)(<h2>Audits</h2>\n).*?(\n<h2>Cost</h2>)", lambda m: m[1] + table + m[2], page, count=1)
    atomic_write_text(out / "evidence.html", page)


def _unlearning(run: Mapping[str, Any], cost: Mapping[str, Any]) -> Mapping[str, Any]:
    """The unlearning cost to state: ``cost['unlearning']`` where given (a continual run's requests together),
    else the run's own."""
    return cost.get("unlearning") or run["cost"]


def _over(spent: Mapping[str, Any]) -> str:
    """What the unlearning figures cover, where a continual run's requests add up."""
    n = spent.get("requests", 1)
    return f" (all {n} requests)" if n > 1 else ""


def _write_report(out: Path, *, shown: Sequence[Shown], results: Mapping[str, Any], run: Mapping[str, Any],
                  vanilla: Mapping[str, Any] | None, request: Mapping[str, Any], cost: Mapping[str, Any]) -> None:
    forget, spent = [s for s in shown if s.role == "forget" and s.held_out], _unlearning(run, cost)
    named = sum(s.names_them(s.after) for s in forget)
    named_before = sum(s.names_them(s.before) for s in forget)
    seen = [s for s in shown if s.role == "forget" and not s.held_out]
    kept = [s for s in shown if s.role == "retain"]
    lines = [
        f"# Removal request: {', '.join(request['names'])}",
        "",
        verdict(run, vanilla, run.get("attacks") or {}),
        "",
        f"- Request: {', '.join(f'`{f}`' for f in request['files'])}; method `{run['method']}`, seed {run['seed']}.",
        f"- Held-out photos of the forget people named in the free answer: {named_before} of {len(forget)} "
        f"before, {named} of {len(forget)} after.",
        *([f"- Training photos of the forget people given no held-out photo, named in the free answer: "
           f"{sum(s.names_them(s.before) for s in seen)} of {len(seen)} before, "
           f"{sum(s.names_them(s.after) for s in seen)} of {len(seen)} after (photos unlearning read)."]
          if seen else []),
        f"- Retained people's photos shown, named after: {sum(s.names_them(s.after) for s in kept)} of {len(kept)}.",
        f"- Cost: unlearning {float(spent['wall_s']):.1f} s{_over(spent)}, the whole command "
        f"{float(cost['total_wall_s']):.1f} s; peak memory {spent['peak_rss_bytes'] / MIB:,.0f} MiB.",
        "- Photos with the answers before and after: [evidence.html](evidence.html).",
        "",
        FIGURES.rstrip("\n"),
        "",
    ]
    body = render_report(results).split("\n", 1)[1]  # the tables, audits and notes, without their title
    atomic_write_text(out / "report.md", "\n".join(lines) + body)
