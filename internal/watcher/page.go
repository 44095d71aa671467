package watcher

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"
)

// pageRefresh is how often the page reloads itself (a meta refresh).
const pageRefresh = 10 * time.Second

// pageView is what the page template renders.
type pageView struct {
	Status    Status
	Rows      []ServiceStatus // attention first, then config order
	Attention int
	Counts    []stateCount
	Refresh   int
	now       time.Time
}

type stateCount struct {
	State string
	N     int
}

// statePriority orders the summary words, worst first.
var statePriority = map[string]int{
	"rollback_failed": 0, "gave_up": 1, "unhealthy": 2, "blocked": 3, "error": 4,
	"deploying": 5, "unknown": 6, "ok": 7,
}

func newPageView(st Status) pageView {
	v := pageView{Status: st, Refresh: int(pageRefresh.Seconds()), now: st.Daemon.Now}
	v.Rows = append([]ServiceStatus(nil), st.Services...)
	sort.SliceStable(v.Rows, func(i, j int) bool {
		return v.Rows[i].NeedsAttention() && !v.Rows[j].NeedsAttention()
	})
	counts := map[string]int{}
	for _, s := range st.Services {
		counts[s.State]++
		if s.NeedsAttention() {
			v.Attention++
		}
	}
	for state, n := range counts {
		v.Counts = append(v.Counts, stateCount{state, n})
	}
	sort.Slice(v.Counts, func(i, j int) bool { return statePriority[v.Counts[i].State] < statePriority[v.Counts[j].State] })
	return v
}

// stateWords are the words shown for each state; the colour comes from the
// state's CSS class.
var stateWords = map[string]string{
	"ok": "healthy", "deploying": "deploying", "blocked": "blocked", "unhealthy": "unhealthy",
	"gave_up": "auto-heal gave up", "rollback_failed": "rollback failed", "error": "check failed",
	"unknown": "not checked yet",
}

// Ago says how long before now t was, for people: "12s ago", "3m ago".
func (v pageView) Ago(t time.Time) string {
	d := v.now.Sub(t)
	if d < 0 {
		return "in " + human(-d)
	}
	return human(d) + " ago"
}

// Until says how long after now t is: "in 25s", or "due now" once passed.
func (v pageView) Until(t time.Time) string {
	d := t.Sub(v.now)
	if d < time.Second {
		return "due now"
	}
	return "in " + human(d)
}

func human(d time.Duration) string {
	switch {
	case d < time.Second:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// pageFuncs are the template's functions; times relative to now are
// methods of pageView ($.Ago, $.Until).
func pageFuncs() template.FuncMap {
	return template.FuncMap{
		"short": short,
		"words": func(state string) string { return stateWords[state] },
		"stamp": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"secs":  func(f float64) string { return fmt.Sprintf("%.1fs", f) },
		"dur":   func(f float64) string { return human(time.Duration(f * float64(time.Second))) },
		"restarts": func(n int) string {
			if n == 1 {
				return "1 restart"
			}
			return fmt.Sprintf("%d restarts", n)
		},
		"outcome": func(o string) string {
			return strings.ReplaceAll(o, "_", " ")
		},
	}
}

// servePage renders the status as one HTML page, escaped by html/template,
// with no script and no external asset.
func (a *API) servePage(w http.ResponseWriter, r *http.Request) {
	v := newPageView(a.buildStatus(a.now()))
	var buf bytes.Buffer
	if err := a.page.Execute(&buf, v); err != nil {
		writeError(w, http.StatusInternalServerError, "render page: "+err.Error())
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Nothing on the page may load or run anything, nor may it be framed.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	w.Write(buf.Bytes())
}

// parsePage parses the page's template; a mistake in it fails every test.
func parsePage() *template.Template {
	return template.Must(template.New("page").Funcs(pageFuncs()).Parse(pageTemplate))
}

const pageTemplate = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{{.Refresh}}">
<title>{{if .Status.Daemon.DeploysPaused}}(paused) {{end}}{{if .Attention}}({{.Attention}}) {{end}}Dockward status</title>
<style>
:root { --fg: #1f2328; --muted: #59636e; --bg: #fff; --line: #d1d9e0; --head: #f6f8fa;
  --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --busy: #0969da; --idle: #59636e; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117; --line: #3d444d; --head: #151b23;
    --ok: #3fb950; --warn: #d29922; --bad: #f85149; --busy: #4493f8; --idle: #9198a1; }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 1rem; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
.daemon { color: var(--muted); margin: 0 0 .75rem; }
.daemon span { white-space: nowrap; margin-right: 1rem; }
.counts { margin: 0 0 1rem; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: .5rem; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: .4rem .6rem; border-bottom: 1px solid var(--line); }
th { background: var(--head); font-weight: 600; position: sticky; top: 0; }
tr { border-left: 6px solid var(--idle); }
thead tr { border-left-color: var(--head); }
.name { font-weight: 600; word-break: break-all; }
.sub { display: block; color: var(--muted); font-size: .85em; word-break: break-all; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, monospace; }
.reason { display: block; color: var(--muted); font-size: .85em; max-width: 40ch; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: .1rem .55rem; border-radius: 1rem; color: #fff; font-weight: 600; white-space: nowrap; background: var(--idle); }
.s-ok { border-left-color: var(--ok); } .s-ok .badge, .badge.s-ok { background: var(--ok); }
.s-deploying { border-left-color: var(--busy); } .s-deploying .badge, .badge.s-deploying { background: var(--busy); }
.s-error { border-left-color: var(--warn); } .s-error .badge, .badge.s-error { background: var(--warn); }
.s-blocked, .s-unhealthy, .s-gave_up, .s-rollback_failed { border-left-color: var(--bad); }
.s-blocked .badge, .s-unhealthy .badge, .s-gave_up .badge, .s-rollback_failed .badge,
.badge.s-blocked, .badge.s-unhealthy, .badge.s-gave_up, .badge.s-rollback_failed { background: var(--bad); }
.none { color: var(--muted); }
footer { margin-top: 1rem; color: var(--muted); }
.paused { border-left: 6px solid var(--bad); padding: .5rem .75rem; background: var(--head); overflow-wrap: anywhere; }
a { color: var(--busy); }
@media (max-width: 760px) {
  body { padding: .5rem; }
  thead { display: none; }
  table, tbody, tr, td { display: block; width: 100%; }
  tr { margin: 0 0 .75rem; border: 1px solid var(--line); border-left-width: 6px; border-radius: 6px; }
  td { border: 0; padding: .25rem .6rem; display: flex; gap: .5rem; }
  td::before { content: attr(data-label); flex: 0 0 6.5rem; color: var(--muted); font-size: .85em; }
  td > div { min-width: 0; }
  .reason { max-width: none; }
  /* Healthy services take one line; the details are on a wider screen and in /status. */
  tr.s-ok { display: flex; flex-wrap: wrap; align-items: baseline; margin-bottom: .4rem; }
  tr.s-ok td { width: auto; }
  tr.s-ok td::before, tr.s-ok td:nth-child(n+3), tr.s-ok .sub { display: none; }
}
</style>
</head>
<body>
<header>
<h1>Dockward</h1>
{{with .Status.Daemon}}<p class="daemon">
<span>version <b>{{.Version}}</b></span>
<span>up {{dur .UptimeSeconds}}</span>
<span>engine {{if .Engine}}{{.Engine}} (API {{.EngineAPI}}){{else}}<b>not reached yet</b>{{end}}</span>
{{if .Compose}}<span>{{.Compose}}</span>{{end}}
<span>last poll {{with .LastPoll}}<time datetime="{{stamp .}}" title="{{stamp .}}">{{$.Ago .}}</time>{{else}}none yet{{end}}</span>
<span>poll every {{dur .PollIntervalSeconds}}</span>
</p>{{end}}
{{with .Status.Daemon.DeploysPaused}}<p class="paused"><b>Deploys are paused:</b> {{.}}</p>{{end}}
<ul class="counts" aria-label="services by state">
<li>{{len .Status.Services}} services{{if .Attention}}, <b>{{.Attention}} need attention</b>{{end}}:</li>
{{range .Counts}}<li><span class="badge s-{{.State}}">{{.N}} {{words .State}}</span></li>
{{end}}</ul>
</header>
<main>
<table>
<thead><tr><th>Service</th><th>State</th><th>Running</th><th>Registry</th><th>Last deploy</th><th>Blocked</th><th>Auto-heal</th><th>Next poll</th></tr></thead>
<tbody>
{{range .Rows}}<tr id="service-{{.Name}}" class="service s-{{.State}}" data-service="{{.Name}}" data-state="{{.State}}">
<td data-label="Service"><div><span class="name">{{.Name}}</span><span class="sub">{{if .Image}}{{.Image}}{{else}}no image{{end}}</span></div></td>
<td data-label="State"><div><span class="badge">{{words .State}}</span>{{with .LastCheck}}{{if eq .Outcome "error"}}<span class="reason">{{.Reason}}</span>{{end}}{{end}}</div></td>
<td data-label="Running"><div>{{with .Running}}<code title="{{.Digest}}">{{short .Digest}}</code><span class="sub">seen {{$.Ago .At}}</span>{{else}}<span class="none">unknown</span>{{end}}</div></td>
<td data-label="Registry"><div>{{with .Registry}}<code title="{{.Digest}}">{{short .Digest}}</code><span class="sub">read {{$.Ago .At}}</span>{{else}}<span class="none">{{if $.Status.Daemon.LastPoll}}not read{{else}}not read yet{{end}}</span>{{end}}</div></td>
<td data-label="Last deploy"><div>{{$blocked := .Blocked}}{{with .LastDeploy}}{{outcome .Outcome}} <code title="{{.Digest}}">{{short .Digest}}</code><span class="sub"><time datetime="{{stamp .Started}}" title="{{stamp .Started}}">{{$.Ago .Started}}</time>, took {{secs .Seconds}}</span>{{if and .Reason (not (and $blocked (eq $blocked.Digest .Digest)))}}<span class="reason">{{.Reason}}</span>{{end}}{{else}}<span class="none">none</span>{{end}}</div></td>
<td data-label="Blocked"><div>{{with .Blocked}}<code title="{{.Digest}}">{{short .Digest}}</code><span class="sub">since {{$.Ago .Since}}</span><span class="reason">{{.Reason}}</span>{{else}}<span class="none">no</span>{{end}}</div></td>
<td data-label="Auto-heal"><div>{{if not .AutoHeal}}<span class="none">off</span>{{else if .Heal.GaveUp}}<b>gave up</b> after {{restarts .Heal.Restarts}}{{else}}{{restarts .Heal.Restarts}}{{with .Heal.CooldownUntil}}<span class="sub">cooldown ends {{$.Until .}}</span>{{end}}{{end}}</div></td>
<td data-label="Next poll"><div>{{if not .AutoUpdate}}<span class="none">auto_update off</span>{{else}}{{with .NextPoll}}{{$.Until .}}{{else}}<span class="none">after the first poll</span>{{end}}{{end}}</div></td>
</tr>
{{end}}</tbody>
</table>
</main>
<footer>Refreshes every {{.Refresh}}s. The same as JSON: <a href="/status">/status</a>. Metrics: <a href="/metrics">/metrics</a>.</footer>
</body>
</html>
`
