package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/snigate/snigate/dataplane"
)

const defaultControlPath = "/run/snigate/control.sock"

// The control socket carries one JSON request and one JSON answer per
// connection. Requests are handed to the main loop, which owns the
// gateway's state, so a reload never races a signal-triggered one.
type controlRequest struct {
	command string
	reply   chan controlReply
}

type controlReply struct {
	Error  string  `json:"error,omitempty"`
	Status *status `json:"status,omitempty"`
	// Kept names changed settings a reload left as they were.
	Kept string `json:"kept,omitempty"`
}

type controlServer struct {
	path     string
	l        net.Listener
	requests chan controlRequest
	log      *zap.Logger
}

// listenControl opens the control socket, replacing a stale one left by a
// process that did not clean up. Only root may connect (mode 0600).
func listenControl(path string, log *zap.Logger) (*controlServer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use: is snigate already running?", path)
	}
	// Only a socket left by an earlier run is removed: a mistyped path
	// must not cost the operator a file.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control %s exists and is not a socket", path)
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict control socket %s: %w", path, err)
	}
	cs := &controlServer{path: path, l: l, requests: make(chan controlRequest), log: log}
	go cs.serve()
	return cs, nil
}

func (cs *controlServer) serve() {
	for {
		c, err := cs.l.Accept()
		if err != nil {
			return
		}
		go cs.handle(c)
	}
}

func (cs *controlServer) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var req struct {
		Command string `json:"command"`
	}
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(c, 4096))).Decode(&req); err != nil {
		json.NewEncoder(c).Encode(controlReply{Error: "bad request: " + err.Error()})
		return
	}
	r := controlRequest{command: req.Command, reply: make(chan controlReply, 1)}
	select {
	case cs.requests <- r:
	case <-time.After(20 * time.Second):
		json.NewEncoder(c).Encode(controlReply{Error: "the daemon's main loop did not answer"})
		return
	}
	json.NewEncoder(c).Encode(<-r.reply)
}

func (cs *controlServer) close() {
	cs.l.Close()
	os.Remove(cs.path)
}

func (g *gateway) handleControl(command string) controlReply {
	switch command {
	case "status":
		return controlReply{Status: g.status()}
	case "reload":
		kept, err := g.reload()
		if err != nil {
			return controlReply{Error: err.Error()}
		}
		return controlReply{Kept: kept}
	}
	return controlReply{Error: fmt.Sprintf("unknown command %q", command)}
}

// status is what "snigate status" shows.
type status struct {
	PID         int                          `json:"pid"`
	Version     string                       `json:"version"`
	Config      string                       `json:"config"`
	Uptime      string                       `json:"uptime"`
	Attachments map[string]string            `json:"attachments"`
	Ports       []uint16                     `json:"ports"`
	Listeners   []string                     `json:"listeners"`
	Steering    map[string]uint64            `json:"steering_packets"`
	Active      map[string]int64             `json:"active_connections"`
	Connections map[string]map[string]uint64 `json:"connections"`
	Hellos      map[string]uint64            `json:"hellos"`
	Cache       *cacheStatus                 `json:"cert_cache,omitempty"`
	Reloads     uint64                       `json:"reloads"`
	LastReload  *reloadResult                `json:"last_reload,omitempty"`
}

type cacheStatus struct {
	Entries              int
	Hits, Misses, Forged uint64
}

func (g *gateway) status() *status {
	st := &status{
		PID:         os.Getpid(),
		Version:     version,
		Config:      g.path,
		Uptime:      time.Since(g.started).Round(time.Second).String(),
		Attachments: map[string]string{},
		Ports:       g.cfg.ports(),
		Active:      map[string]int64{},
		Connections: map[string]map[string]uint64{},
		Hellos:      map[string]uint64{},
		Reloads:     g.reloadsOK.Load() + g.reloadsRefused.Load(),
		LastReload:  g.lastReload.Load(),
	}
	for iface, mode := range g.steering.Attachments() {
		st.Attachments[iface] = string(mode)
	}
	for _, l := range g.listeners {
		st.Listeners = append(st.Listeners, l.Addr().String())
	}
	if c, err := g.steering.Counters(); err == nil {
		st.Steering = steeringCounters(c)
	}
	stats := g.server.Stats()
	for _, a := range dataplane.Actions() {
		st.Active[a.String()] = stats.Active(a)
		st.Connections[a.String()] = map[string]uint64{
			"ok": stats.Connections(a, false), "error": stats.Connections(a, true)}
	}
	for _, r := range dataplane.HelloResults() {
		st.Hellos[r.String()] = stats.Hellos(r)
	}
	if f := g.forger.Load(); f != nil {
		fs := f.Stats()
		st.Cache = &cacheStatus{Entries: fs.Entries, Hits: fs.Hits, Misses: fs.Misses,
			Forged: fs.Forged}
	}
	return st
}

// askDaemon sends one command over the control socket and returns the
// answer.
func askDaemon(path, command string) (controlReply, error) {
	var reply controlReply
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return reply, fmt.Errorf("snigate is not running (no daemon on %s)", path)
		}
		return reply, fmt.Errorf("connect to control socket %s: %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if err := json.NewEncoder(c).Encode(map[string]string{"command": command}); err != nil {
		return reply, fmt.Errorf("send %s to %s: %w", command, path, err)
	}
	if err := json.NewDecoder(c).Decode(&reply); err != nil {
		return reply, fmt.Errorf("read answer to %s from %s: %w", command, path, err)
	}
	if reply.Error != "" {
		return reply, errors.New(reply.Error)
	}
	return reply, nil
}

func cmdStatus(args []string, stdout io.Writer) error {
	fs := newFlagSet("status", stdout)
	path := fs.String("control", defaultControlPath, "control `socket` of the running daemon")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	reply, err := askDaemon(*path, "status")
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(reply.Status)
	}
	printStatus(stdout, reply.Status)
	return nil
}

func printStatus(out io.Writer, st *status) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintf(w, "snigate %s running (pid %d, up %s, config %s)\n", st.Version, st.PID,
		st.Uptime, st.Config)
	fmt.Fprintf(w, "attached:\t%s\n", joinMap(st.Attachments))
	fmt.Fprintf(w, "ports:\t%v\tlisteners: %s\n", st.Ports, strings.Join(st.Listeners, ", "))
	fmt.Fprintf(w, "steered packets:\t%s\n", joinMap(st.Steering))
	fmt.Fprintf(w, "active connections:\t%s\n", joinMap(st.Active))
	for _, a := range []string{"splice", "bump", "block"} {
		c := st.Connections[a]
		fmt.Fprintf(w, "%s connections:\t%d ok, %d with errors\n", a, c["ok"], c["error"])
	}
	fmt.Fprintf(w, "hellos:\t%s\n", joinMap(st.Hellos))
	if st.Cache != nil {
		fmt.Fprintf(w, "certificate cache:\t%d entries, %d hits, %d misses, %d forged\n",
			st.Cache.Entries, st.Cache.Hits, st.Cache.Misses, st.Cache.Forged)
	}
	fmt.Fprintf(w, "reloads:\t%d", st.Reloads)
	if r := st.LastReload; r != nil {
		result := "ok"
		if r.Error != "" {
			result = "refused: " + r.Error
		}
		fmt.Fprintf(w, " (last %s, %s)", r.At.Format(time.RFC3339), result)
	}
	fmt.Fprintln(w)
}

func joinMap[V any](m map[string]V) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, m[k])
	}
	return strings.Join(parts, " ")
}

func cmdReload(args []string, stdout io.Writer) error {
	fs := newFlagSet("reload", stdout)
	path := fs.String("control", defaultControlPath, "control `socket` of the running daemon")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	reply, err := askDaemon(*path, "reload")
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if reply.Kept != "" {
		fmt.Fprintf(stdout, "reloaded; changes to %s need a restart and are not applied\n", reply.Kept)
		return nil
	}
	fmt.Fprintln(stdout, "reloaded")
	return nil
}
