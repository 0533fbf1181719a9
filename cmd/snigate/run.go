package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"

	"github.com/snigate/snigate/bpf"
	"github.com/snigate/snigate/dataplane"
	gwtls "github.com/snigate/snigate/tls"
)

func cmdRun(args []string, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	path := fs.String("config", "/etc/snigate/snigate.yaml", "configuration `file`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer log.Sync()

	if err := run(cfg, log); err != nil {
		log.Error("exit", zap.Error(err))
		return err
	}
	return nil
}

func newLogger(spec LogSpec, out io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(spec.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
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
	case "auto", "":
		if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			enc = zapcore.NewConsoleEncoder(encCfg)
		} else {
			enc = zapcore.NewJSONEncoder(encCfg)
		}
	default:
		return nil, fmt.Errorf("log.format: %q is not json, console or auto", spec.Format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(out)), level)
	return zap.New(core), nil
}

// gateway is the running daemon: listeners, dataplane and steering.
type gateway struct {
	cfg       *Config
	log       *zap.Logger
	server    *dataplane.Server
	listeners []*net.TCPListener
	steering  *bpf.Steering
}

func run(cfg *Config, log *zap.Logger) error {
	g := &gateway{cfg: cfg, log: log}
	if err := g.start(); err != nil {
		g.stop()
		return err
	}
	serveErr := make(chan error, len(g.listeners))
	for _, l := range g.listeners {
		go func() { serveErr <- g.server.Serve(l) }()
	}
	log.Info("started", zap.Strings("interfaces", cfg.Intercept.Interfaces),
		zap.Any("attach", g.steering.Attachments()), zap.Uint16s("ports", cfg.ports()))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	var err error
	select {
	case s := <-sig:
		log.Info("stopping", zap.Stringer("signal", s))
	case err = <-serveErr:
		err = fmt.Errorf("serve: %w", err)
	}
	if stopErr := g.stop(); err == nil {
		err = stopErr
	}
	return err
}

// start builds the dataplane, opens the listeners and only then attaches the
// steering, so no client is ever steered to a socket that is not there yet.
func (g *gateway) start() error {
	policy, err := g.cfg.policy()
	if err != nil {
		return err
	}
	dcfg := dataplane.Config{
		Policy:       policy,
		HelloTimeout: time.Duration(g.cfg.Hello.Timeout),
		MaxHello:     g.cfg.Hello.MaxBytes,
		DialTimeout:  time.Duration(g.cfg.Upstream.DialTimeout),
		Logger:       g.log.Named("dataplane"),
	}
	if g.cfg.usesBump() {
		if dcfg.Bump, err = g.bumper(); err != nil {
			return err
		}
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

	g.steering, err = bpf.Attach(bpf.Config{
		Interfaces: g.cfg.Intercept.Interfaces,
		Ports:      g.cfg.ports(),
		Bypass:     g.cfg.bypass(),
		Mode:       bpf.Mode(g.cfg.Intercept.Attach),
		Mark:       g.cfg.Intercept.Mark,
		Table:      g.cfg.Intercept.Table,
	})
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

func (g *gateway) bumper() (dataplane.BumpFunc, error) {
	ca, err := loadCA(g.cfg)
	if err != nil {
		return nil, err
	}
	roots, err := gwtls.LoadRoots(g.cfg.Upstream.Roots)
	if err != nil {
		return nil, err
	}
	forger, err := gwtls.NewForger(ca, 10000)
	if err != nil {
		return nil, err
	}
	b := gwtls.NewBumper(gwtls.BumpConfig{Forger: forger, Roots: roots})
	return func(ctx context.Context, client, upstream net.Conn, sni string,
		alpn []string) (int64, int64, error) {
		res, err := b.Bump(ctx, client, upstream, sni, alpn)
		return res.BytesUp, res.BytesDown, err
	}, nil
}

// stop detaches the steering first, so that new connections go straight out
// while the dataplane drains, then closes the listeners and waits for
// established connections up to the drain time.
func (g *gateway) stop() error {
	var errs []error
	if g.steering != nil {
		if err := g.steering.Close(); err != nil {
			errs = append(errs, err)
		}
		g.steering = nil
	}
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
	if len(errs) == 0 {
		g.log.Info("stopped")
	}
	return errors.Join(errs...)
}
