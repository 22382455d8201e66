// Small line charts on <canvas>: a few series over the last minutes, drawn with the
// canvas API alone.

export const PALETTE = ["#3056d3", "#e0457b", "#1f9d55", "#c98a00", "#7b4fd6", "#0f9bb3", "#d6602f", "#5c677d"];

/** Keeps the last `span` ms of samples of named series. */
export class History {
  constructor(span = 180_000) {
    this.span = span;
    this.series = new Map();
  }

  add(name, t, value) {
    if (!Number.isFinite(value)) return;
    let points = this.series.get(name);
    if (!points) {
      points = [];
      this.series.set(name, points);
    }
    points.push([t, value]);
    while (points.length > 0 && points[0][0] < t - this.span) points.shift();
  }

  names(prefix) {
    return [...this.series.keys()].filter((name) => name.startsWith(prefix)).sort();
  }

  get(name) {
    return this.series.get(name) ?? [];
  }
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 4, 6, 8, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function shortNumber(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(0)}k`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(2)));
}

/**
 * Draws `series` ([{label, points: [[t, v], ...]}]) on `canvas`, the time axis ending at
 * `now` and spanning `span` ms, with `unit` after the y labels; the y axis reaches at
 * least `floor`.
 */
export function drawLines(canvas, series, { now, span = 180_000, unit = "", floor = 1 } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 400;
  const height = canvas.clientHeight || 180;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 46;
  const right = 8;
  const top = 8;
  const bottom = 20;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const end = now ?? Date.now();
  const start = end - span;
  let max = 0;
  for (const s of series) for (const [t, v] of s.points) if (t >= start) max = Math.max(max, v);
  max = niceMax(Math.max(max, floor));
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#677084";
  g.strokeStyle = "#e6e9ef";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 4; i += 1) {
    const y = top + plotH - (plotH * i) / 4;
    g.beginPath();
    g.moveTo(left, Math.round(y) + 0.5);
    g.lineTo(left + plotW, Math.round(y) + 0.5);
    g.stroke();
    g.fillText(`${shortNumber((max * i) / 4)}${unit}`, left - 6, y);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  for (let i = 0; i <= 3; i += 1) {
    const x = left + (plotW * i) / 3;
    const seconds = Math.round((span * (3 - i)) / 3 / 1000);
    g.textAlign = i === 0 ? "left" : i === 3 ? "right" : "center";
    g.fillText(i === 3 ? "now" : `-${seconds}s`, x, top + plotH + 5);
  }
  series.forEach((s, index) => {
    const points = s.points.filter(([t]) => t >= start - 5_000);
    if (points.length === 0) return;
    g.strokeStyle = s.color ?? PALETTE[index % PALETTE.length];
    g.lineWidth = 2;
    g.lineJoin = "round";
    g.beginPath();
    points.forEach(([t, v], i) => {
      const x = left + (plotW * Math.max(0, t - start)) / span;
      const y = top + plotH - (plotH * v) / max;
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  });
}
