// Traverz live map: H3 cells coloured by level and incident markers, live over /v1/stream.
// Plain SVG on a plain background: no tiles, nothing fetched from the internet.
(function () {
  "use strict";
  var LEVEL_COLOURS = ["#2e9e44", "#b5cf3a", "#f2c12e", "#f07b22", "#d7301f", "#5b0d6e"];
  var LEVEL_NAMES = ["free", "light", "moderate", "heavy", "standstill", "closed"];
  var INCIDENT_COLOURS = { crash: "#e41a1c", stalled_vehicle: "#ff7f00", road_work: "#984ea3",
    hazard: "#ffd92f", closure: "#000000", congestion: "#377eb8" };
  var SVGNS = "http://www.w3.org/2000/svg";
  var params = new URLSearchParams(location.search);
  var token = params.get("token");
  var svg = document.getElementById("map");
  var cellsLayer = document.getElementById("cells");
  var incidentsLayer = document.getElementById("incidents");
  var statusEl = document.getElementById("status");
  var cells = new Map();  // cell -> polygon
  var incidents = new Map();  // incident id -> circle
  var view = null;  // [S, W, N, E]
  var k = 1;  // cos(mid latitude): x = lon * k, y = -lat keeps shapes right near the centre

  function status(ws) {
    statusEl.dataset.ws = ws;
    statusEl.dataset.cells = String(cells.size);
    statusEl.dataset.incidents = String(incidents.size);
    statusEl.textContent = cells.size + " cells · " + incidents.size + " incidents · " + ws;
  }

  function legend() {
    var el = document.getElementById("legend");
    el.innerHTML = "level" + LEVEL_NAMES.map(function (name, i) {
      return '<span style="background:' + LEVEL_COLOURS[i] + '"></span>' + i + " " + name;
    }).join("");
  }

  function setView(box) {
    view = box;
    k = Math.cos(((box[0] + box[2]) / 2) * Math.PI / 180);
    svg.setAttribute("viewBox", [box[1] * k, -box[2], (box[3] - box[1]) * k, box[2] - box[0]].join(" "));
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  }

  function onCondition(c) {
    var poly = cells.get(c.cell);
    if (!poly) {
      poly = document.createElementNS(SVGNS, "polygon");
      poly.setAttribute("points", h3.cellToBoundary(c.cell).map(function (p) {
        return (p[1] * k).toFixed(6) + "," + (-p[0]).toFixed(6);
      }).join(" "));
      poly.dataset.cell = c.cell;
      cellsLayer.appendChild(poly);
      cells.set(c.cell, poly);
    }
    var level = Math.max(0, Math.min(5, c.level | 0));
    poly.dataset.level = String(level);
    poly.setAttribute("fill", LEVEL_COLOURS[level]);
    var title = poly.querySelector("title") || poly.appendChild(document.createElementNS(SVGNS, "title"));
    title.textContent = c.cell + " level " + level + " jam " + c.jam_factor +
      (c.incidents && c.incidents.length ? " incidents " + c.incidents.join(", ") : "");
  }

  function onRemoved(cell) {  // the cell's condition was tombstoned (expired): no longer drawn
    var poly = cells.get(cell);
    if (poly) { poly.remove(); cells.delete(cell); }
  }

  function onAlert(a) {
    var dot = incidents.get(a.id);
    if (a.state === "cleared") {
      if (dot) { dot.remove(); incidents.delete(a.id); }
      return;
    }
    if (!dot) {
      dot = document.createElementNS(SVGNS, "circle");
      dot.dataset.incident = a.id;
      incidentsLayer.appendChild(dot);
      incidents.set(a.id, dot);
    }
    dot.dataset.type = a.type;
    dot.setAttribute("cx", (a.lon * k).toFixed(6));
    dot.setAttribute("cy", (-a.lat).toFixed(6));
    dot.setAttribute("r", ((view[2] - view[0]) / 45).toFixed(6));
    dot.setAttribute("fill", INCIDENT_COLOURS[a.type] || "#444");
    var title = dot.querySelector("title") || dot.appendChild(document.createElementNS(SVGNS, "title"));
    title.textContent = a.type + " (" + a.state + ") confidence " + a.confidence;
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var ws = new WebSocket(scheme + "//" + location.host + "/v1/stream?token=" + encodeURIComponent(token));
    ws.onopen = function () {
      ws.send(JSON.stringify({ type: "subscribe", bbox: view }));
      status("open");
    };
    ws.onmessage = function (ev) {
      var msg = JSON.parse(ev.data);
      if (msg.type === "condition" && msg.condition === null) onRemoved(msg.cell);
      else if (msg.type === "condition") onCondition(msg.condition);
      else if (msg.type === "alert") onAlert(msg.alert);
      else if (msg.type === "error") statusEl.dataset.error = msg.message;
      status("live");
    };
    ws.onclose = function () { status("reconnecting"); setTimeout(connect, 2000); };
  }

  function start() {
    legend();
    if (!token) {
      statusEl.textContent = "add ?token=<device token> (traverz tokens issue --device map-viewer)";
      statusEl.dataset.ws = "no-token";
      return;
    }
    var box = params.get("bbox");
    if (box) {
      setView(box.split(",").map(Number));
      connect();
      return;
    }
    fetch("/map/extent.json").then(function (r) { return r.json(); }).then(function (doc) {
      if (!doc.bbox) {  // nothing published yet: ask again
        statusEl.textContent = "waiting for the first conditions…";
        setTimeout(start, 2000);
        return;
      }
      setView(doc.bbox);
      connect();
    });
  }

  start();
})();
