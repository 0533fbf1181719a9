package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"

	"github.com/snigate/snigate/bpf"
	"github.com/snigate/snigate/dataplane"
	gwtls "github.com/snigate/snigate/tls"
)

func cmdRun(args []string, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	path := fs.String("config", defaultConfigPath, "configuration `file`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	level := zap.NewAtomicLevel()
	log, err := newLogger(cfg.Log, level, stderr)
	if err != nil {
		return err
	}
	defer log.Sync()

	tuneGC()
	g := &gateway{path: *path, cfg: cfg, log: log, level: level, started: time.Now()}
	// The caller prints a failure once, on stderr, which under systemd is
	// the journal as well.
	return g.run()
}

const defaultConfigPath = "/etc/snigate/snigate.yaml"

// gatewayGCPercent is the GOGC the daemon runs with unless the environment
// sets one. The live heap is small (caches, per-connection state) and
// every bumped connection allocates handshake garbage, so at Go's default
// of 100 the collector runs many times a second under load: in the bench,
// 400 took about 8% off the CPU of a bumped connection, for a heap that
// may grow to five times the live one instead of twice.
const gatewayGCPercent = 400

func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gatewayGCPercent)
	}
}

// newLogger logs to the journal when stderr is connected to it (under
// systemd), else JSON lines, or console text on a terminal.
func newLogger(spec LogSpec, level zap.AtomicLevel, out io.Writer) (*zap.Logger, error) {
	if err := setLevel(level, spec.Level); err != nil {
		return nil, err
	}
	if spec.Format == "auto" || spec.Format == "journal" {
		if ok, _ := journal.StderrIsJournalStream(); ok || spec.Format == "journal" {
			return zap.New(newJournalCore(level)), nil
		}
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch spec.Format {
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "console":
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			enc = zapcore.NewConsoleEncoder(encCfg)
		} else {
			enc = zapcore.NewJSONEncoder(encCfg)
		}
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(out)), level)), nil
}

func setLevel(level zap.AtomicLevel, name string) error {
	l, err := zapcore.ParseLevel(name)
	if err != nil {
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", name)
	}
	level.SetLevel(l)
	return nil
}

// gateway is the running daemon: listeners, dataplane, bump path, steering,
// and the control and metrics endpoints.
type gateway struct {
	path    string
	cfg     *Config
	log     *zap.Logger
	level   zap.AtomicLevel
	started time.Time
	// running is set once start succeeded.
	running bool

	server    *dataplane.Server
	listeners []*net.TCPListener
	steering  *bpf.Steering
	forger    atomic.Pointer[gwtls.Forger]
	caRaw     []byte
	bumpFails bumpFailures
	control   *controlServer
	metrics   *http.Server

	reloadsOK      atomic.Uint64
	reloadsRefused atomic.Uint64
	lastReload     atomic.Pointer[reloadResult]
}

type reloadResult struct {
	At    time.Time
	Error string
	// Kept names the changed settings the reload could not apply.
	Kept string
}

// run starts the gateway, serves until SIGINT or SIGTERM, and stops it.
func (g *gateway) run() error {
	// Signals are caught before anything starts: a SIGTERM that arrives
	// just after READY must stop the gateway cleanly, not kill it with the
	// steering still attached.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)

	if err := g.start(); err != nil {
		g.stop()
		g.log.Info("start failed; what had started is undone")
		return err
	}
	g.running = true
	serveErr := make(chan error, len(g.listeners))
	for _, l := range g.listeners {
		go func() { serveErr <- g.server.Serve(l) }()
	}
	g.log.Info("started", zap.Strings("interfaces", g.cfg.Intercept.Interfaces),
		zap.Any("attach", g.steering.Attachments()), zap.Uint16s("ports", g.cfg.ports()),
		zap.Stringer("verify_failure", gwtls.VerifyFailureMode(g.cfg.Upstream.VerifyFailure)),
		zap.Stringer("key_exchange", gwtls.KeyExchange(g.cfg.Upstream.KeyExchange)))
	// READY only now: the programs are attached and the listeners accept.
	notify(g.log, daemon.SdNotifyReady)

	err := g.loop(sig, serveErr)
	notify(g.log, daemon.SdNotifyStopping)
	if stopErr := g.stop(); err == nil {
		err = stopErr
	}
	if berr := notifyBarrier(5 * time.Second); berr != nil {
		g.log.Warn("notify systemd", zap.Error(berr))
	}
	return err
}

// loop is the daemon's main loop: signals, control requests and the
// watchdog. The watchdog is pinged from here, after a health check, so a
// wedged loop stops the pings and systemd restarts the daemon.
func (g *gateway) loop(sig <-chan os.Signal, serveErr <-chan error) error {
	var watchdog <-chan time.Time
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		watchdog = t.C
	}
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				g.reload() // logs what it did
				continue
			}
			g.log.Info("stopping", zap.Stringer("signal", s))
			return nil
		case req := <-g.control.requests:
			req.reply <- g.handleControl(req.command)
		case <-watchdog:
			if err := g.healthy(); err != nil {
				g.log.Error("health check failed; watchdog not pinged", zap.Error(err))
				continue
			}
			notify(g.log, daemon.SdNotifyWatchdog)
		case err := <-serveErr:
			return fmt.Errorf("serve: %w", err)
		}
	}
}

// healthy checks that the parts the watchdog vouches for still answer.
func (g *gateway) healthy() error {
	if _, err := g.steering.Counters(); err != nil {
		return err
	}
	for _, l := range g.listeners {
		if _, err := l.SyscallConn(); err != nil {
			return fmt.Errorf("listener %s: %w", l.Addr(), err)
		}
	}
	return nil
}

func notify(log *zap.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("notify systemd", zap.String("state", state), zap.Error(err))
	}
}

// start builds the dataplane, opens the listeners and only then attaches the
// steering, so no client is ever steered to a socket that is not there yet.
func (g *gateway) start() error {
	dcfg, err := g.dataplaneConfig(g.cfg)
	if err != nil {
		return err
	}
	if g.server, err = dataplane.NewServer(dcfg); err != nil {
		return err
	}
	for _, addr := range g.cfg.Listen {
		l, err := dataplane.ListenTransparent(context.Background(), addr.String())
		if err != nil {
			return err
		}
		g.listeners = append(g.listeners, l)
	}
	if g.control, err = listenControl(string(g.cfg.Control), g.log); err != nil {
		return err
	}
	if err := g.startMetrics(); err != nil {
		return err
	}

	g.steering, err = bpf.Attach(g.cfg.steeringConfig())
	if err != nil {
		return err
	}
	for _, l := range g.listeners {
		if err := g.steering.SetListener(l); err != nil {
			return err
		}
	}
	return nil
}

// dataplaneConfig builds what the dataplane needs from cfg, loading the CA
// and roots when the policy bumps.
func (g *gateway) dataplaneConfig(cfg *Config) (dataplane.Config, error) {
	policy, err := cfg.policy()
	if err != nil {
		return dataplane.Config{}, err
	}
	dcfg := dataplane.Config{
		Policy:       policy,
		HelloTimeout: time.Duration(cfg.Hello.Timeout),
		MaxHello:     cfg.Hello.MaxBytes,
		DialTimeout:  time.Duration(cfg.Upstream.DialTimeout),
		Logger:       g.log.Named("dataplane"),

		HalfCloseTimeout: time.Duration(cfg.Relay.HalfCloseTimeout),
	}
	if cfg.usesBump() {
		if dcfg.Bump, err = g.bumper(cfg); err != nil {
			return dataplane.Config{}, err
		}
	}
	return dcfg, nil
}

func (g *gateway) bumper(cfg *Config) (dataplane.BumpFunc, error) {
	ca, err := loadCA(cfg)
	if err != nil {
		return nil, err
	}
	roots, err := gwtls.LoadRoots(cfg.Upstream.Roots)
	if err != nil {
		return nil, err
	}
	// A reload with the same CA keeps the forged certificates cached.
	forger := g.forger.Load()
	if forger == nil || !bytes.Equal(g.caRaw, ca.Cert.Raw) {
		if forger, err = gwtls.NewForger(ca, cfg.Upstream.CertCache); err != nil {
			return nil, err
		}
	}
	g.forger.Store(forger)
	g.caRaw = ca.Cert.Raw
	b := gwtls.NewBumper(gwtls.BumpConfig{Forger: forger, Roots: roots,
		VerifyFailure:    gwtls.VerifyFailureMode(cfg.Upstream.VerifyFailure),
		KeyExchange:      gwtls.KeyExchange(cfg.Upstream.KeyExchange),
		HalfCloseTimeout: time.Duration(cfg.Relay.HalfCloseTimeout)})
	headersFor, err := requestHeaders(cfg)
	if err != nil {
		return nil, err
	}
	access := g.log.Named("http")
	return func(ctx context.Context, client, upstream net.Conn,
		req dataplane.BumpRequest) (int64, int64, error) {
		opts := gwtls.BumpOptions{OnRequest: accessLogger(access, req), HeadersFor: headersFor}
		res, err := b.Bump(ctx, client, upstream, req.ServerName, req.ALPN, opts)
		g.bumpFails.count(err)
		return res.BytesUp, res.BytesDown, err
	}, nil
}

// requestHeaders returns the lookup of the headers to add to a bumped
// request: those of the bump rule that the request's own host matches.
// Matching each request, rather than the connection's SNI, keeps the policy
// right when a client sends several hosts over one connection.
func requestHeaders(cfg *Config) (func(host string) http.Header, error) {
	policy, err := cfg.policy()
	if err != nil {
		return nil, err
	}
	byRule := make([]http.Header, len(cfg.Policy.Rules))
	for i, r := range cfg.Policy.Rules {
		byRule[i] = http.Header(r.AddRequestHeaders)
	}
	return func(host string) http.Header {
		action, rule := policy.Decide([]byte(host))
		if rule < 0 || action != dataplane.ActionBump {
			return nil
		}
		return byRule[rule]
	}, nil
}

// accessLogger returns the callback that writes one access-log line per
// HTTP request (a WebSocket session counting as one) of a bumped connection.
func accessLogger(log *zap.Logger, req dataplane.BumpRequest) func(gwtls.RequestLog) {
	return func(r gwtls.RequestLog) {
		fields := []zap.Field{
			zap.Stringer("client", req.Client),
			zap.Stringer("dst", req.Dst),
			zap.String("host", r.Host),
			zap.String("method", r.Method),
			zap.String("path", r.Path),
			zap.Int("status", r.Status),
			zap.String("proto", r.Proto),
			zap.Int64("bytes_up", r.BytesUp),
			zap.Int64("bytes_down", r.BytesDown),
			zap.Duration("duration", r.Duration),
		}
		if r.WebSocket {
			fields = append(fields, zap.Bool("websocket", true))
		}
		if r.Err != nil {
			fields = append(fields, zap.Error(r.Err))
		}
		log.Info("request", fields...)
	}
}

// reload re-reads the configuration and the CA. New connections get the new
// policy; established ones keep theirs, and the steering stays attached
// throughout. A configuration that fails validation changes nothing.
//
// It returns the changed settings it had to keep, if any, which only a
// restart applies.
func (g *gateway) reload() (string, error) {
	notify(g.log, daemon.SdNotifyReloading+"\n"+daemon.SdNotifyMonotonicUsec())
	defer notify(g.log, daemon.SdNotifyReady)

	kept, err := g.applyReload()
	res := &reloadResult{At: time.Now(), Kept: kept}
	if err != nil {
		g.reloadsRefused.Add(1)
		res.Error = err.Error()
		g.log.Warn("reload refused; the running configuration stays", zap.Error(err))
	} else {
		g.reloadsOK.Add(1)
		g.log.Info("reloaded", zap.String("config", g.path))
	}
	g.lastReload.Store(res)
	return kept, err
}

func (g *gateway) applyReload() (string, error) {
	cfg, err := LoadConfig(g.path)
	if err != nil {
		return "", err
	}
	// LIMITATION: interfaces, ports, listeners, control and metrics
	// addresses are fixed at start; a reload keeps the running ones and
	// says which. Reattaching without a gap would lift this.
	var kept []string
	for _, s := range []struct {
		name    string
		changed bool
	}{
		{"intercept", !reflect.DeepEqual(cfg.Intercept, g.cfg.Intercept)},
		{"listen", !reflect.DeepEqual(cfg.Listen, g.cfg.Listen)},
		{"control", cfg.Control != g.cfg.Control},
		{"metrics", cfg.Metrics != g.cfg.Metrics},
	} {
		if s.changed {
			kept = append(kept, s.name)
		}
	}
	cfg.Intercept, cfg.Listen = g.cfg.Intercept, g.cfg.Listen
	cfg.Control, cfg.Metrics = g.cfg.Control, g.cfg.Metrics
	keptText := strings.Join(kept, ", ")
	if keptText != "" {
		g.log.Warn("changed settings need a restart; the running ones stay",
			zap.String("settings", keptText))
	}
	dcfg, err := g.dataplaneConfig(cfg)
	if err != nil {
		return "", err
	}
	if err := setLevel(g.level, cfg.Log.Level); err != nil {
		return "", err
	}
	if err := g.server.Reload(dcfg); err != nil {
		return "", err
	}
	g.cfg = cfg
	return keptText, nil
}

// stop closes the listeners first: the kernel then drops them from the
// sockmap, so new connections go straight out while established ones drain.
// The steering stays attached during the drain, because the program is what
// keeps delivering an established flow's packets to its socket here; once
// the connections are gone it is detached and the routing removed.
func (g *gateway) stop() error {
	if g.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(),
			time.Duration(g.cfg.Shutdown.Drain))
		if err := g.server.Shutdown(ctx); err != nil {
			g.log.Warn("drain", zap.Error(err))
		}
		cancel()
	}
	for _, l := range g.listeners {
		l.Close()
	}
	var errs []error
	if g.steering != nil {
		if err := g.steering.Close(); err != nil {
			errs = append(errs, err)
		}
		g.steering = nil
		// With the steering gone, what the intercepted flows left in
		// TIME_WAIT would drop clients that reuse a port (see
		// ReleaseTimeWait).
		if n, err := dataplane.ReleaseTimeWait(g.cfg.ports()); err != nil {
			g.log.Warn("release time-wait sockets", zap.Int("released", n), zap.Error(err))
		} else if n > 0 {
			g.log.Info("released time-wait sockets", zap.Int("released", n))
		}
	}
	if g.control != nil {
		g.control.close()
	}
	if g.metrics != nil {
		g.metrics.Close()
	}
	if len(errs) == 0 && g.running {
		g.log.Info("stopped")
	}
	return errors.Join(errs...)
}

// bumpFailures counts failed bumps by reason, for the metrics.
type bumpFailures struct {
	verify, other atomic.Uint64
}

func (b *bumpFailures) count(err error) {
	switch {
	case err == nil:
	case errors.Is(err, gwtls.ErrUpstreamVerify):
		b.verify.Add(1)
	default:
		b.other.Add(1)
	}
}
