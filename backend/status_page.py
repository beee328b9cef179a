"""The status page's HTML: server-rendered from a backend.status snapshot, inline CSS and SVG, no script, no
request to anything but this backend (no fonts, no images, no favicon fetch). Refreshes itself with a meta tag.

The plot, per project: held-out gIoU of each scored fine-tune, oldest to newest: the candidate (a filled green dot
when promoted, a red cross when rejected) next to the serving version scored on the same held-out tasks (a
hollow dot), and a line through the version that served after each run.
"""
from __future__ import annotations

import calendar
import math
import time
from typing import List, Optional

from jinja2 import Environment

PLOT_W, PLOT_H = 640, 240
PLOT_PAD = {"left": 52, "right": 16, "top": 30, "bottom": 40}
PLOT_RUNS = 20  # the newest scored fine-tunes per project
REFRESH_DEFAULT_S = 15


def _nice_step(span: float) -> float:
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25):
        if span / step <= 6:
            return step
    return 0.25


def giou_plot(outcomes: List[dict]) -> Optional[dict]:
    """Geometry of the gIoU plot from a project's outcomes (newest first), or None when none was scored."""
    runs = [o for o in reversed(outcomes) if o.get("status") in ("promoted", "rejected")
            and isinstance(o.get("giou_new"), (int, float))][-PLOT_RUNS:]
    if not runs:
        return None
    values = [o["giou_new"] for o in runs] + [o["giou_current"] for o in runs
                                               if isinstance(o.get("giou_current"), (int, float))]
    lo, hi = min(values), max(values)
    if hi - lo < 0.1:
        mid = (hi + lo) / 2
        lo, hi = mid - 0.05, mid + 0.05
    step = _nice_step(hi - lo)
    lo = max(0.0, math.floor((lo - step / 2) / step) * step)
    hi = min(1.0, math.ceil((hi + step / 2) / step) * step)
    if hi <= lo:
        lo, hi = 0.0, 1.0
    x0, x1 = PLOT_PAD["left"], PLOT_W - PLOT_PAD["right"]
    y0, y1 = PLOT_H - PLOT_PAD["bottom"], PLOT_PAD["top"]

    def y(v: float) -> float:
        return round(y0 - (min(max(v, lo), hi) - lo) / (hi - lo) * (y0 - y1), 1)

    def x(i: int) -> float:
        if len(runs) == 1:
            return round((x0 + x1) / 2, 1)
        margin = 28
        return round(x0 + margin + i * (x1 - x0 - 2 * margin) / (len(runs) - 1), 1)

    ticks = []
    t = lo
    while t <= hi + 1e-9:
        ticks.append({"y": y(t), "label": f"{t:.2f}"})
        t += step
    points, serving_line = [], []
    for i, o in enumerate(runs):
        cur = o.get("giou_current")
        promoted = o["status"] == "promoted"
        version = o.get("version") or "?"
        label = version.rsplit("-", 1)[-1] if "-" in version else version
        p = {"x": x(i), "y_new": y(o["giou_new"]), "y_current": None if cur is None else y(cur),
             "promoted": promoted, "label": label, "version": version, "giou_new": o["giou_new"],
             "giou_current": cur, "parent": o.get("parent"), "finished_at": o.get("finished_at")}
        points.append(p)
        after = o["giou_new"] if promoted else cur
        if after is not None:
            serving_line.append(f"{x(i)},{y(after)}")
    return {"w": PLOT_W, "h": PLOT_H, "x0": x0, "x1": x1, "y0": y0, "y1": y1, "ticks": ticks, "points": points,
            "serving_line": " ".join(serving_line), "n": len(runs),
            "label_every": max(1, math.ceil(len(runs) / 12))}


def ago(iso_text: Optional[str], now: float) -> str:
    """'12 s ago', '5 min ago', '3 h ago', '2 d ago' from an ISO-8601 UTC string."""
    if not iso_text:
        return ""
    try:
        t = calendar.timegm(time.strptime(iso_text, "%Y-%m-%dT%H:%M:%SZ"))
    except (ValueError, OverflowError):
        return ""
    s = max(0.0, now - t)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 90 * 60:
        return f"{s / 60:.0f} min ago"
    if s < 36 * 3600:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} d ago"


def _fmt(v, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "–"


def _pct(run: dict) -> int:
    step, steps = run.get("step"), run.get("steps")
    if not isinstance(step, (int, float)) or not isinstance(steps, (int, float)) or steps <= 0:
        return 0
    return int(round(100 * min(1.0, step / steps)))


_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["fmt"] = _fmt
_ENV.filters["pct"] = _pct
_ENV.filters["signed"] = lambda v: f"{v:+.3f}" if isinstance(v, (int, float)) else "–"

TEMPLATE = _ENV.from_string("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{% if refresh_s %}<meta http-equiv="refresh" content="{{ refresh_s }}">{% endif %}
<link rel="icon" href="data:,">
<title>refseg-assist · status</title>
<style>
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa; --card:#fff; --ok:#1b873f; --bad:#c62828;
        --warn:#b26a00; --accent:#2458a6; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#102a43; color:#fff; padding:14px 28px; display:flex; align-items:baseline; gap:18px;
         flex-wrap:wrap; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header .meta { color:#bcccdc; font-size:13px; }
main { max-width:1180px; margin:0 auto; padding:18px 28px 40px; }
h2 { font-size:16px; margin:26px 0 10px; }
h3 { font-size:15px; margin:0 0 8px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 16px; }
.card .big { font-size:26px; font-weight:600; }
.card .sub { color:var(--muted); font-size:12px; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line);
        border-radius:8px; overflow:hidden; }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f0f4f8; font-weight:600; font-size:12px; color:var(--muted); text-transform:uppercase;
     letter-spacing:.03em; }
tr:last-child td { border-bottom:0; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600;
         background:#e4e7eb; color:var(--ink); white-space:nowrap; }
.b-ok { background:#e3f9e5; color:var(--ok); } .b-bad { background:#ffe3e3; color:var(--bad); }
.b-warn { background:#fff3c4; color:var(--warn); } .b-busy { background:#dceefb; color:var(--accent); }
.muted { color:var(--muted); } .small { font-size:12px; } .nowrap { white-space:nowrap; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
.project { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:16px 18px;
           margin-bottom:16px; }
.project-head { display:flex; flex-wrap:wrap; gap:8px 26px; align-items:baseline; margin-bottom:10px; }
.serving { font-size:18px; font-weight:600; }
.grid2 { display:grid; grid-template-columns:minmax(0,600px) minmax(0,1fr); gap:18px; align-items:start; }
@media (max-width:980px) { .grid2 { grid-template-columns:1fr; } }
.lineage { display:flex; flex-wrap:wrap; align-items:center; gap:4px; margin:4px 0 12px; }
.chip { border:1px solid var(--line); border-radius:6px; padding:3px 8px; background:#f8fafc; font-size:12.5px; }
.chip.serving-chip { border-color:var(--ok); background:#e3f9e5; font-weight:600; }
.arrow { color:var(--muted); }
.bar { height:10px; background:#e4e7eb; border-radius:5px; overflow:hidden; margin:6px 0 4px; }
.bar > div { height:100%; background:var(--accent); }
.progress { border:1px solid #bcdcfb; background:#f0f7ff; border-radius:8px; padding:10px 14px; margin-bottom:12px; }
svg.giou-plot { width:100%; height:auto; background:#fff; }
svg text { font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif; }
.empty { color:var(--muted); font-style:italic; padding:10px 0; }
.reason { max-width:520px; overflow-wrap:anywhere; }
footer { color:var(--muted); font-size:12px; margin-top:28px; }
</style>
</head>
<body>
<header>
  <h1>refseg-assist · status</h1>
  <span class="meta">base model <code>{{ s.base_model.version }}</code></span>
  <span class="meta">as of {{ s.generated_at|replace("T", " ")|replace("Z", " UTC") }}{% if refresh_s %} · refreshes every {{ refresh_s }} s{% endif %}</span>
</header>
<main>
<section class="cards" aria-label="summary">
  <div class="card"><div class="big">{{ workers_alive }} / {{ s.workers|length }}</div>
    <div class="sub">workers alive / registered</div></div>
  {% for q in s.queues %}
  <div class="card" data-queue="{{ q.name }}"><div class="big">{{ q.queued }}</div>
    <div class="sub">waiting in <b>{{ q.name }}</b></div>
    <div class="sub">{{ q.started }} running · {{ q.workers }} worker{{ "" if q.workers == 1 else "s" }}</div></div>
  {% endfor %}
  <div class="card"><div class="big">{{ running_count }}</div><div class="sub">fine-tunes running</div></div>
  <div class="card"><div class="big">{{ s.failures|length }}</div><div class="sub">recent failures</div></div>
</section>

<h2>Workers</h2>
{% if s.workers %}
<table id="workers">
  <tr><th>worker</th><th>state</th><th>queues</th><th>doing</th><th>started</th>
      <th class="num">jobs ok</th><th class="num">failed</th></tr>
  {% for w in s.workers %}
  <tr>
    <td class="mono">{{ w.name }}</td>
    <td>
      {% if not w.alive %}<span class="badge b-bad" title="its liveness key expired: the process is probably gone">not responding</span>
      {% elif w.state == "busy" %}<span class="badge b-busy">busy</span>
      {% elif w.state == "idle" %}<span class="badge b-ok">idle</span>
      {% else %}<span class="badge b-warn">{{ w.state }}</span>{% endif %}
    </td>
    <td>{{ w.queues|join(", ") }}</td>
    <td>{% if w.current_job %}{{ w.current_job.description or w.current_job.id }}
        <div class="small muted">{{ w.current_job.queue }} · for {{ w.current_job.running_s|fmt(0) }} s</div>
        {% else %}<span class="muted">–</span>{% endif %}</td>
    <td class="small" title="{{ w.birth or '' }}">{{ ago(w.birth) }}</td>
    <td class="num">{{ w.successful_jobs if w.successful_jobs is not none else "–" }}</td>
    <td class="num">{{ w.failed_jobs if w.failed_jobs is not none else "–" }}</td>
  </tr>
  {% endfor %}
</table>
{% else %}<p class="empty">No worker is registered: nothing will be predicted or trained until one starts
(<code>python -m workers.worker</code>).</p>{% endif %}

<h2>Projects</h2>
{% if not s.projects %}<p class="empty">No project has been fine-tuned yet; every project is served by
<code>{{ s.base_model.version }}</code>.</p>{% endif %}
{% for p in s.projects %}
<section class="project" id="project-{{ p.key }}" data-project="{{ p.key }}">
  <div class="project-head">
    <h3>Project {{ p.id }}</h3>{% if p.created %}<span class="muted" data-role="created">created {{ p.created }}</span>{% endif %}
    <span>serving <span class="serving" data-role="serving-version">{{ p.serving.version }}</span>
      {% if p.serving.promoted_at %}<span class="muted small">promoted {{ ago(p.serving.promoted_at) }}{%
        if p.serving.giou is not none %} · held-out gIoU {{ p.serving.giou|fmt }}{% endif %}</span>
      {% elif p.serving.base %}<span class="muted small">(base model)</span>{% endif %}</span>
    <span class="small muted">{{ p.finetune.new_annotations }} annotation(s) since the last training trigger
      {% if p.finetune.queued %}· <span class="badge b-warn">fine-tune queued</span>{% endif %}
      {% if p.finetune.rerun_requested %}· <span class="badge b-warn">rerun requested</span>{% endif %}</span>
  </div>
  {% set run = p.finetune.running %}
  {% if run %}
  <div class="progress" data-role="progress">
    <b>Fine-tuning{% if run.version %} {{ run.version }}{% endif %}</b>
    <span class="muted small">· {{ run.state }} · started {{ ago(run.started_at) }}
      {% if run.worker %}· on <span class="mono">{{ run.worker }}</span>
        {% if run.worker_alive is false %}<span class="badge b-bad">not responding</span>{% endif %}{% endif %}</span>
    {% if run.step is not none and run.steps %}
    <div class="bar"><div style="width: {{ run|pct }}%"></div></div>
    <span class="small">step {{ run.step }} / {{ run.steps }} ({{ run|pct }} %) · loss {{ run.loss|fmt(4) }}
      {% if run.progress_at %}<span class="muted">· updated {{ ago(run.progress_at) }}</span>{% endif %}</span>
    {% else %}<div class="small muted">reading annotations from Label Studio…</div>{% endif %}
  </div>
  {% endif %}
  <div class="lineage" aria-label="lineage">
    {% for v in p.lineage %}
      {% if not loop.first %}<span class="arrow">→</span>{% endif %}
      <span class="chip{% if v.serving %} serving-chip{% endif %}" title="{% if v.base %}base model{% else %}promoted {{ v.promoted_at }} from {{ v.parent }}{% endif %}">{{ v.version }}{%
        if v.giou is not none %} <span class="muted">{{ v.giou|fmt }}</span>{% endif %}</span>
    {% endfor %}
  </div>
  <div class="grid2">
    <div>
    {% set plot = plots[p.key] %}
    {% if plot %}
      <svg class="giou-plot" data-project="{{ p.key }}" viewBox="0 0 {{ plot.w }} {{ plot.h }}" role="img"
           aria-label="held-out gIoU per fine-tune of project {{ p.id }}" xmlns="http://www.w3.org/2000/svg">
        <text x="{{ plot.x0 }}" y="16" font-size="12" fill="#616e7c">held-out gIoU per fine-tune</text>
        <g font-size="11" fill="#1f2933">
          <circle cx="{{ plot.x1 - 318 }}" cy="12" r="5" fill="#1b873f"/><text x="{{ plot.x1 - 309 }}" y="16">promoted</text>
          <path d="M{{ plot.x1 - 246 }},8 l8,8 M{{ plot.x1 - 246 }},16 l8,-8" stroke="#c62828" stroke-width="2.2"/>
          <text x="{{ plot.x1 - 233 }}" y="16">rejected</text>
          <circle cx="{{ plot.x1 - 171 }}" cy="12" r="4.5" fill="#fff" stroke="#7b8794" stroke-width="1.6"/>
          <text x="{{ plot.x1 - 162 }}" y="16">serving version, same tasks</text>
        </g>
        {% for t in plot.ticks %}
        <line x1="{{ plot.x0 }}" x2="{{ plot.x1 }}" y1="{{ t.y }}" y2="{{ t.y }}" stroke="#e4e7eb"/>
        <text x="{{ plot.x0 - 6 }}" y="{{ t.y + 4 }}" font-size="11" text-anchor="end" fill="#616e7c">{{ t.label }}</text>
        {% endfor %}
        <line x1="{{ plot.x0 }}" x2="{{ plot.x0 }}" y1="{{ plot.y1 }}" y2="{{ plot.y0 }}" stroke="#9aa5b1"/>
        <line x1="{{ plot.x0 }}" x2="{{ plot.x1 }}" y1="{{ plot.y0 }}" y2="{{ plot.y0 }}" stroke="#9aa5b1"/>
        {% if plot.n > 1 %}<polyline points="{{ plot.serving_line }}" fill="none" stroke="#1b873f" stroke-width="2"
          stroke-opacity="0.55"/>{% endif %}
        {% for pt in plot.points %}
        <g class="run {{ 'promoted' if pt.promoted else 'rejected' }}" data-version="{{ pt.version }}">
          <title>{{ pt.version }}: {{ 'promoted' if pt.promoted else 'rejected' }}, held-out gIoU {{ pt.giou_new|fmt(4) }}{%
            if pt.giou_current is not none %} vs {{ pt.giou_current|fmt(4) }} for {{ pt.parent or 'the serving version' }}{% endif %}</title>
          {% if pt.y_current is not none %}
          <line x1="{{ pt.x }}" x2="{{ pt.x }}" y1="{{ pt.y_current }}" y2="{{ pt.y_new }}"
                stroke="{{ '#1b873f' if pt.promoted else '#c62828' }}" stroke-dasharray="3 3" stroke-width="1.2"/>
          <circle cx="{{ pt.x }}" cy="{{ pt.y_current }}" r="4.5" fill="#fff" stroke="#7b8794" stroke-width="1.6"/>
          {% endif %}
          {% if pt.promoted %}
          <circle cx="{{ pt.x }}" cy="{{ pt.y_new }}" r="6" fill="#1b873f"/>
          {% else %}
          <path d="M{{ pt.x - 5.5 }},{{ pt.y_new - 5.5 }} l11,11 M{{ pt.x - 5.5 }},{{ pt.y_new + 5.5 }} l11,-11"
                stroke="#c62828" stroke-width="2.6" stroke-linecap="round"/>
          {% endif %}
          {% if loop.index0 % plot.label_every == 0 or loop.last %}
          <text x="{{ pt.x }}" y="{{ plot.y0 + 16 }}" font-size="11" text-anchor="middle"
                fill="{{ '#1f2933' if pt.promoted else '#c62828' }}">{{ pt.label }}</text>
          {% endif %}
        </g>
        {% endfor %}
        <text x="{{ (plot.x0 + plot.x1) / 2 }}" y="{{ plot.h - 6 }}" font-size="11" text-anchor="middle"
              fill="#616e7c">fine-tune runs, oldest → newest</text>
      </svg>
      <div class="small muted">Each run is scored on the project's held-out annotations; a candidate is promoted
        only if it is not worse than the serving version on the same tasks.</div>
    {% else %}
      <p class="empty">No fine-tune of this project has been scored yet.</p>
    {% endif %}
    </div>
    <div>
    {% if p.outcomes %}
    <table class="outcomes">
      <tr><th>finished</th><th>candidate</th><th>outcome</th><th class="num">gIoU new / serving</th></tr>
      {% for o in p.outcomes[:8] %}
      <tr data-status="{{ o.status }}">
        <td class="small" title="{{ o.finished_at }}">{{ ago(o.finished_at) }}</td>
        <td class="mono nowrap">{{ o.version or "–" }}</td>
        <td><span class="badge {{ {'promoted': 'b-ok', 'rejected': 'b-bad', 'failed': 'b-bad', 'skipped': 'b-warn'}[o.status] }}">{{ o.status }}</span>
          {% if o.reason and o.status != 'promoted' %}<div class="small muted reason">{{ o.reason }}</div>
          {% elif o.status == 'promoted' and o.held_out %}<div class="small muted">Δ {{ o.giou_delta|signed }}{%
            if o.giou_delta_se is not none %} ± {{ o.giou_delta_se|fmt }}{% endif %} on {{ o.held_out }} held-out
            task{{ "" if o.held_out == 1 else "s" }}</div>{% endif %}</td>
        <td class="num">{{ o.giou_new|fmt }} / {{ o.giou_current|fmt }}{%
          if o.click_iou_new is number and o.click_iou_current is number %}
          <div class="small muted nowrap" data-role="click-iou"
            title="mean IoU after one simulated corrective click on the expression's answer">1 click {{
            o.click_iou_new|fmt }} / {{ o.click_iou_current|fmt }}</div>{% endif %}</td>
      </tr>
      {% endfor %}
    </table>
    {% endif %}
    </div>
  </div>
</section>
{% endfor %}

<h2>Recent failures</h2>
{% if s.failures %}
<table id="failures">
  <tr><th>when</th><th>where</th><th>job</th><th>reason</th></tr>
  {% for f in s.failures %}
  <tr>
    <td class="small" title="{{ f.failed_at }}">{{ ago(f.failed_at) }}</td>
    <td>{% if f.project %}fine-tune, project {{ f.project }}{% else %}{{ f.queue }}{% endif %}
      {% if f.description and not f.project %}<div class="small muted">{{ f.description }}</div>{% endif %}</td>
    <td class="mono small">{{ f.job }}</td>
    <td class="reason">{{ f.reason }}</td>
  </tr>
  {% endfor %}
</table>
{% else %}<p class="empty">No failed job.</p>{% endif %}

<footer>The same data as JSON: <a href="status.json">status.json</a>. Prometheus metrics: <a href="metrics">metrics</a>.</footer>
</main>
</body>
</html>
""")


def render(snapshot: dict, refresh_s: Optional[int] = REFRESH_DEFAULT_S, now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    return TEMPLATE.render(
        s=snapshot, refresh_s=refresh_s, ago=lambda text: ago(text, now),
        plots={p["key"]: giou_plot(p["outcomes"]) for p in snapshot["projects"]},
        workers_alive=sum(1 for w in snapshot["workers"] if w["alive"]),
        running_count=sum(1 for p in snapshot["projects"] if p["finetune"]["running"]),
    )
