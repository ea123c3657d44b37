// A small SVG line chart for a few live series. Each series is scaled to its own maximum
// (the legend shows the current value), so different units can share one chart.
const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

export class Chart {
  // series: [{name, color, format}], points: how many samples are kept.
  constructor(title, series, points = 90) {
    this.series = series.map((s) => ({ ...s, values: [] }));
    this.points = points;
    this.root = document.createElement('figure');
    this.root.className = 'chart';
    this.svg = svg('svg', { viewBox: '0 0 300 80', preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
    this.legend = document.createElement('figcaption');
    this.root.append(this.svg, this.legend);
    this.title = title;
    this.draw();
  }

  push(values) {
    this.series.forEach((s, i) => {
      const v = values[i];
      s.values.push(Number.isFinite(v) ? v : 0);
      if (s.values.length > this.points) s.values.shift();
    });
    this.draw();
  }

  draw() {
    this.svg.replaceChildren();
    for (const y of [20, 40, 60]) this.svg.append(svg('line', { x1: 0, x2: 300, y1: y, y2: y, class: 'grid' }));
    this.legend.replaceChildren();
    const t = document.createElement('span');
    t.className = 'chart-title';
    t.textContent = this.title;
    this.legend.append(t);
    for (const s of this.series) {
      const max = Math.max(...s.values, 1e-9);
      // A new chart fills 20 slots first, then widens to `points` as samples come in.
      const span = Math.min(this.points, Math.max(s.values.length, 20));
      const step = 300 / Math.max(span - 1, 1);
      const off = span - s.values.length;
      const pts = s.values.map((v, i) => `${((off + i) * step).toFixed(1)},${(78 - (v / max) * 74).toFixed(1)}`);
      if (pts.length > 1) {
        this.svg.append(svg('polyline', { points: pts.join(' '), fill: 'none', stroke: s.color, 'stroke-width': 1.5, 'vector-effect': 'non-scaling-stroke' }));
      }
      const item = document.createElement('span');
      item.className = 'legend-item';
      const sw = svg('svg', { width: 12, height: 12, 'aria-hidden': 'true' });
      sw.append(svg('rect', { width: 12, height: 12, fill: s.color }));
      const last = s.values.length ? s.values[s.values.length - 1] : NaN;
      item.append(sw, ` ${s.name}: ${s.format ? s.format(last) : last}`);
      this.legend.append(item);
    }
  }
}
