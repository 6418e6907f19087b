const page = JSON.parse(document.getElementById('page').textContent);
const params = new URLSearchParams(location.search);
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === 'text') el.textContent = v; else el.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined)
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
}
const pct = v => v === null || v === undefined ? '\u2013' : (v * 100).toFixed(1) + '%';
const money = v => v === null || v === undefined ? '\u2013' : Number(v).toFixed(2);
const int = v => Number(v).toLocaleString('en');
function scopeQuery() {
  const q = new URLSearchParams();
  const days = params.get('days') ?? '30';
  if (days !== 'all') q.set('days', days);
  if (params.get('segment')) q.set('segment', params.get('segment'));
  return q;
}
async function getJSON(url) {
  const r = await fetch(url, {credentials: 'same-origin', headers: {Accept: 'application/json'}});
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}
function filters(segments) {
  const days = params.get('days') ?? '30';
  const period = h('select', {id: 'days'}, ...[['7', 'Last 7 days'], ['30', 'Last 30 days'],
    ['90', 'Last 90 days'], ['all', 'All time']].map(([v, t]) =>
      h('option', {value: v, selected: v === days ? '' : null, text: t})));
  const seg = h('select', {id: 'segment'}, h('option', {value: '', text: 'Every contact'}),
    ...segments.map(s => h('option', {value: s.id, selected: s.id === params.get('segment') ? '' : null, text: s.name})));
  const apply = () => {
    const q = new URLSearchParams(location.search);
    q.set('days', period.value); if (seg.value) q.set('segment', seg.value); else q.delete('segment');
    location.search = q.toString();
  };
  period.onchange = apply; seg.onchange = apply;
  return h('div', {class: 'filters'}, 'Sent in', period, 'for', seg);
}
function cards(m) {
  const items = [['Sent', int(m.sent), 'sent'], ['Delivered', int(m.delivered), 'delivered'],
    ['Open rate', pct(m.open_rate), 'open_rate'], ['Click rate', pct(m.click_rate), 'click_rate'],
    ['Click-to-open', pct(m.click_to_open_rate), 'click_to_open_rate'],
    ['Conversions', int(m.conversions), 'conversions'], ['Revenue', money(m.revenue), 'revenue'],
    ['RPR', money(m.revenue_per_recipient), 'revenue_per_recipient']];
  return h('div', {class: 'cards'}, ...items.map(([label, value, key]) =>
    h('div', {class: 'card'}, h('div', {class: 'label', text: label}),
      h('div', {class: 'value', 'data-figure': key, text: value}))));
}
const COLUMNS = [['Sent', m => int(m.sent), 'sent'], ['Delivered', m => int(m.delivered), 'delivered'],
  ['Opens', m => int(m.opens), 'opens'], ['Open rate', m => pct(m.open_rate), 'open_rate'],
  ['Clicks', m => int(m.clicks), 'clicks'], ['Click rate', m => pct(m.click_rate), 'click_rate'],
  ['CTO', m => pct(m.click_to_open_rate), 'click_to_open_rate'],
  ['Orders', m => int(m.conversions), 'conversions'], ['Conv. rate', m => pct(m.conversion_rate), 'conversion_rate'],
  ['Revenue', m => money(m.revenue), 'revenue'], ['RPR', m => money(m.revenue_per_recipient), 'revenue_per_recipient'],
  ['Unsubs', m => int(m.unsubscribes), 'unsubscribes'], ['Complaints', m => int(m.complaints), 'complaints']];
function metricCells(m) { return COLUMNS.map(([, f, key]) => h('td', {'data-figure': key, text: f(m)})); }
function funnel(stages) {
  const top = Math.max(1, stages[0].count);
  return h('table', {class: 'funnel', id: 'funnel'}, ...stages.map(s => h('tr', {'data-stage': s.stage},
    h('td', {text: s.stage}), h('td', {class: 'track'}, h('div', {class: 'bar', style: `width:${(100 * s.count / top).toFixed(1)}%`})),
    h('td', {'data-figure': 'count', text: int(s.count)}), h('td', {text: pct(s.rate)}))));
}
function chart(series) {
  const NS = 'http://www.w3.org/2000/svg', W = 1080, H = 260, L = 48, B = 28, T = 12, R = 12;
  const lines = [['open_rate', 'Open rate', '#2563eb'], ['click_rate', 'Click rate', '#16a34a'],
    ['conversion_rate', 'Conversion rate', '#d97706']];
  const s = (tag, attrs) => { const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v); return el; };
  const svg = s('svg', {viewBox: `0 0 ${W} ${H}`, width: '100%', id: 'series', role: 'img'});
  const max = Math.ceil(10 * Math.max(0.05, ...series.flatMap(p => lines.map(([k]) => p[k] ?? 0)))) / 10;
  const x = i => L + (series.length < 2 ? (W - L - R) / 2 : i * (W - L - R) / (series.length - 1));
  const y = v => T + (H - T - B) * (1 - v / max);
  for (let g = 0; g <= 4; g++) {
    const v = max * g / 4;
    svg.append(s('line', {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#e4e4e7'}));
    const t = s('text', {x: L - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#71717a'});
    t.textContent = (v * 100).toFixed(Number.isInteger(v * 100) ? 0 : 1) + '%'; svg.append(t);
  }
  const every = Math.max(1, Math.ceil(series.length / 10));
  series.forEach((p, i) => { if (i % every) return;
    const t = s('text', {x: x(i), y: H - 8, 'text-anchor': 'middle', 'font-size': 11, fill: '#71717a'});
    t.textContent = p.day.slice(5); svg.append(t); });
  for (const [key, , color] of lines) {
    const pts = series.map((p, i) => `${x(i)},${y(p[key] ?? 0)}`).join(' ');
    svg.append(s('polyline', {points: pts, fill: 'none', stroke: color, 'stroke-width': 2.5, 'data-line': key}));
    series.forEach((p, i) => svg.append(s('circle', {cx: x(i), cy: y(p[key] ?? 0), r: 3.5, fill: color})));
  }
  const legend = h('div', {class: 'legend'}, ...lines.map(([, label, color]) =>
    h('span', {}, h('i', {style: `background:${color}`}), label)));
  return h('div', {class: 'panel'}, legend, svg);
}
function verdict(ab) {
  if (!ab) return '';
  const label = ab.status === 'winner' ? `Winner: ${ab.leader}` : ab.status === 'leading'
    ? `${ab.leader} leads (needs ${ab.min_recipients} per variant)` : 'No winner yet';
  return h('span', {class: `verdict ${ab.status}`, 'data-verdict': ab.status,
    text: `${label} · ${ab.metric} · P(best) ${pct(ab.probability)}`});
}
async function storePage(root) {
  const data = await getJSON('/v1/reports/flows?' + scopeQuery());
  const q = new URLSearchParams(location.search).toString();
  root.append(h('h1', {text: page.store + ': flows'}), filters(data.segments), cards(data.total),
    h('h2', {text: 'Flows'}),
    h('div', {class: 'scroll'}, h('table', {id: 'flows'}, h('tr', {}, h('th', {text: 'Flow'}), ...COLUMNS.map(([t]) => h('th', {text: t}))),
      ...data.flows.map(f => h('tr', {'data-flow': f.flow},
        h('td', {}, h('a', {href: `/dashboard/flows/${encodeURIComponent(f.flow)}${q ? '?' + q : ''}`, text: f.flow})),
        ...metricCells(f.metrics))))));
}
async function flowPage(root) {
  const data = await getJSON(`/v1/reports/flows/${encodeURIComponent(page.flow)}?` + scopeQuery());
  const rows = [];
  for (const step of data.steps) {
    rows.push(h('tr', {'data-step': step.step}, h('td', {}, h('strong', {text: step.step})),
      ...metricCells(step.metrics), h('td', {class: 'ab'}, verdict(step.ab))));
    for (const v of step.variants) rows.push(h('tr', {class: 'variant', 'data-step': step.step, 'data-variant': v.variant},
      h('td', {text: `variant ${v.variant}`}), ...metricCells(v.metrics),
      h('td', {class: 'ab', 'data-figure': 'probability_best', text: `P(best) ${pct(v.probability_best)}`})));
  }
  const form = h('form', {method: 'get', action: `/dashboard/flows/${encodeURIComponent(page.flow)}/preview`, id: 'preview-form'},
    h('input', {name: 'contact', placeholder: 'contact email or id', required: '', size: 32}), ' ',
    h('button', {type: 'submit', text: 'Preview every email'}));
  root.append(h('h1', {text: data.flow}), filters(data.segments),
    h('p', {}, h('a', {href: data.journeys_url, id: 'journeys', target: '_blank', rel: 'noopener',
      text: 'Running journeys in the Temporal UI'})),
    cards(data.metrics), h('h2', {text: 'Funnel'}), h('div', {class: 'panel'}, funnel(data.funnel)),
    h('h2', {text: 'Rates by day of sending'}), chart(data.series),
    h('h2', {text: 'Emails and A/B variants'}),
    h('div', {class: 'scroll'}, h('table', {id: 'steps'}, h('tr', {}, h('th', {text: 'Email'}), ...COLUMNS.map(([t]) => h('th', {text: t})),
      h('th', {style: 'text-align:left', text: 'A/B'})), ...rows)),
    h('h2', {text: 'Preview'}), form);
}
async function previewPage(root) {
  const contact = params.get('contact') || '';
  const emails = await getJSON(`/v1/reports/flows/${encodeURIComponent(page.flow)}/preview?contact=${encodeURIComponent(contact)}`);
  root.append(h('h1', {text: `${page.flow} for ${contact}`}));
  if (!emails.length) root.append(h('p', {text: 'This flow has no emails to preview yet.'}));
  for (const e of emails) {
    const box = h('section', {'data-preview': e.step}, h('h2', {text: `${e.step} (${e.template})`}));
    if (e.error) box.append(h('p', {class: 'error', text: e.error}));
    else box.append(h('p', {}, h('strong', {text: 'Subject: '}), e.subject),
      h('iframe', {sandbox: '', srcdoc: e.html, title: e.step}),
      h('details', {}, h('summary', {text: 'Text part'}), h('pre', {text: e.text})));
    root.append(box);
  }
}
const root = document.getElementById('app');
({store: storePage, flow: flowPage, preview: previewPage})[page.kind](root)
  .then(() => root.setAttribute('data-ready', 'true'))
  .catch(err => { root.append(h('p', {class: 'error', id: 'error', text: String(err.message || err)}));
                  root.setAttribute('data-ready', 'error'); });
