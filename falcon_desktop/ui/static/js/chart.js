// A small SVG line chart: lineChart(container, [{name, points: [[x, y], ...]}], {xLabel, format}).

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fdf", "#e0692a", "#2a9d5c", "#9b4dca", "#c9354b", "#6b7a8f"];
const MAX_POINTS = 600;

function node(tag, attributes, text) {
  const element = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function thin(points) {  // keep the drawing cheap on long runs: every n-th point, and the last one
  if (points.length <= MAX_POINTS) return points;
  const every = Math.ceil(points.length / MAX_POINTS);
  return points.filter((_, index) => index % every === 0 || index === points.length - 1);
}

function ticks(low, high, count = 4) {
  if (high === low) return [low];
  const raw = (high - low) / count, power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const values = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) values.push(v);
  return values;
}

export function lineChart(container, series, {xLabel = "step", format = (v) => v.toPrecision(3), empty = "no data yet"} = {}) {
  const width = container.clientWidth || 360, height = container.clientHeight || 180;
  const pad = {left: 48, right: 10, top: 8, bottom: 26};
  const svg = node("svg", {viewBox: `0 0 ${width} ${height}`, width, height, role: "img"});
  const all = series.flatMap((s) => s.points).filter(([x, y]) => isFinite(x) && isFinite(y));
  if (!all.length) {
    svg.append(node("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis"}, empty));
    container.replaceChildren(svg);
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  for (const value of ticks(y0, y1)) {
    svg.append(node("line", {x1: pad.left, x2: width - pad.right, y1: sy(value), y2: sy(value), class: "gridline"}));
    svg.append(node("text", {x: pad.left - 6, y: sy(value) + 4, "text-anchor": "end", class: "axis"}, format(value)));
  }
  for (const value of ticks(x0, x1, 5)) {
    if (sx(value) > width - pad.right - 36) continue;  // leave room for the axis label
    svg.append(node("text", {x: sx(value), y: height - 8, "text-anchor": "middle", class: "axis"}, Math.round(value)));
  }
  svg.append(node("text", {x: width - pad.right, y: height - 8, "text-anchor": "end", class: "axis"}, xLabel));
  series.forEach((s, index) => {
    const points = thin(s.points.filter(([x, y]) => isFinite(x) && isFinite(y)));
    if (!points.length) return;
    const color = s.color || COLORS[index % COLORS.length];
    const d = points.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
    svg.append(node("path", {d, fill: "none", stroke: color, "stroke-width": 1.8}));
    if (series.length > 1) {
      svg.append(node("text", {x: pad.left + 6 + index * 110, y: pad.top + 10, fill: color, class: "legend"}, s.name));
    }
  });
  container.replaceChildren(svg);
}
