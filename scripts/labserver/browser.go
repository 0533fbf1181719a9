package main

import (
	"io"
	"net/http"
)

// browserPage is the page a headless browser loads in the end-to-end tests:
// it opens a WebSocket to the spliced host and one to the bumped host,
// checks that each echoes, and writes the results into the page, which the
// test reads with --dump-dom.
const browserPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>pending</title></head>
<body><pre id="results">pending</pre>
<script>
const targets = ["wss://tunnel.cloudproxy.app/ws", "wss://www.example.test/ws"];
const results = {};
let left = targets.length;
function settle(url, verdict) {
  if (url in results) return;
  results[url] = verdict;
  if (--left === 0) {
    document.getElementById("results").textContent = "RESULTS " + JSON.stringify(results);
    document.title = "done";
  }
}
for (const url of targets) {
  const msg = "browser says hello to " + url;
  let ws;
  try { ws = new WebSocket(url); } catch (e) { settle(url, "error " + e); continue; }
  setTimeout(() => settle(url, "timeout"), 8000);
  ws.onopen = () => ws.send(msg);
  ws.onmessage = (e) => { settle(url, e.data === msg ? "echo ok" : "bad echo"); ws.close(); };
  ws.onerror = () => settle(url, "error");
}
</script></body></html>
`

func handleBrowser(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	io.WriteString(w, browserPage)
}
