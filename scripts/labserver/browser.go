package main

import (
	"io"
	"net/http"
	"strconv"
	"time"
)

// browserPage is the page a headless browser loads in the end-to-end tests:
// it opens a WebSocket to the spliced host and one to the bumped host,
// checks that each echoes, and writes the results into the page, which the
// test reads with --dump-dom. The browser dumps the page at its load event,
// so the page holds that back in real time with a script the server sends
// late (/slow); a timer in the page would run on the headless browser's
// virtual clock, which does not wait for WebSockets.
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
  ws.onopen = () => ws.send(msg);
  ws.onmessage = (e) => { settle(url, e.data === msg ? "echo ok" : "bad echo"); ws.close(); };
  ws.onerror = () => settle(url, "error");
}
</script>
<script src="/slow?ms=3000"></script>
</body></html>
`

// handleSlow answers after ms milliseconds (at most 10 s) with an empty
// script, or earlier if the client goes away.
func handleSlow(w http.ResponseWriter, r *http.Request) {
	ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
	if err != nil || ms < 0 || ms > 10000 {
		http.Error(w, "ms must be 0-10000", http.StatusBadRequest)
		return
	}
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "text/javascript")
	io.WriteString(w, "// late on purpose\n")
}

func handleBrowser(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	io.WriteString(w, browserPage)
}
