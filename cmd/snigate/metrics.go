package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/snigate/snigate/dataplane"
)

// The metrics are read from the dataplane's, the forger's and the eBPF
// program's own counters at scrape time, so the hot paths pay nothing for
// them. Labels are bounded: actions, outcomes, directions, reasons, never
// names or addresses.
var (
	descConns = prometheus.NewDesc("snigate_connections_total",
		"Finished connections by action and outcome.", []string{"action", "outcome"}, nil)
	descActive = prometheus.NewDesc("snigate_connections_active",
		"Connections being handled, by action.", []string{"action"}, nil)
	descBytes = prometheus.NewDesc("snigate_relayed_bytes_total",
		"Bytes relayed by action and direction (up: client to server).",
		[]string{"action", "direction"}, nil)
	descHellos = prometheus.NewDesc("snigate_hellos_total",
		"Connections by how their ClientHello read ended.", []string{"result"}, nil)
	descDial = prometheus.NewDesc("snigate_upstream_dial_failures_total",
		"Original destinations that could not be reached.", nil, nil)
	descBumpFail = prometheus.NewDesc("snigate_bump_failures_total",
		"Bumped connections that failed, by reason.", []string{"reason"}, nil)
	descCacheHits = prometheus.NewDesc("snigate_cert_cache_hits_total",
		"Forged certificates served from the cache.", nil, nil)
	descCacheMisses = prometheus.NewDesc("snigate_cert_cache_misses_total",
		"Forged certificate lookups that missed the cache.", nil, nil)
	descForged = prometheus.NewDesc("snigate_certs_forged_total",
		"Certificates forged.", nil, nil)
	descCacheSize = prometheus.NewDesc("snigate_cert_cache_entries",
		"Forged certificates in the cache.", nil, nil)
	descForgeTime = prometheus.NewDesc("snigate_cert_forge_seconds_total",
		"Time spent forging certificates; divided by snigate_certs_forged_total, "+
			"the mean time to forge one.", nil, nil)
	descSteer = prometheus.NewDesc("snigate_steering_packets_total",
		"Packets seen by the eBPF steering program, by verdict.", []string{"verdict"}, nil)
	descInfo = prometheus.NewDesc("snigate_build_info",
		"Always 1; the version label says which snigate runs.", []string{"version"}, nil)
	descParked = prometheus.NewDesc("snigate_relay_parked_directions",
		"Directions of spliced tunnels idle now, waiting without a goroutine; "+
			"a tunnel idle both ways counts two.", nil, nil)
	descReloads = prometheus.NewDesc("snigate_reloads_total",
		"Configuration reloads, by result.", []string{"result"}, nil)
)

type gatewayCollector struct{ g *gateway }

func (c gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConns, descActive, descBytes, descHellos,
		descDial, descBumpFail, descCacheHits, descCacheMisses, descForged, descCacheSize,
		descForgeTime, descParked,
		descSteer, descInfo, descReloads} {
		ch <- d
	}
}

func (c gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.g
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	stats := g.server.Stats()
	for _, a := range dataplane.Actions() {
		counter(descConns, stats.Connections(a, false), a.String(), "ok")
		counter(descConns, stats.Connections(a, true), a.String(), "error")
		gauge(descActive, float64(stats.Active(a)), a.String())
		counter(descBytes, stats.Bytes(a, true), a.String(), "up")
		counter(descBytes, stats.Bytes(a, false), a.String(), "down")
	}
	for _, r := range dataplane.HelloResults() {
		counter(descHellos, stats.Hellos(r), r.String())
	}
	counter(descDial, stats.DialErrors())
	gauge(descParked, float64(dataplane.ParkedDirections()))
	counter(descBumpFail, g.bumpFails.verify.Load(), "upstream_verify")
	counter(descBumpFail, g.bumpFails.other.Load(), "other")
	if f := g.forger.Load(); f != nil {
		fs := f.Stats()
		counter(descCacheHits, fs.Hits)
		counter(descCacheMisses, fs.Misses)
		counter(descForged, fs.Forged)
		gauge(descCacheSize, float64(fs.Entries))
		ch <- prometheus.MustNewConstMetric(descForgeTime, prometheus.CounterValue,
			fs.ForgeTime.Seconds())
	}
	if g.steering != nil {
		if counters, err := g.steering.Counters(); err == nil {
			for verdict, v := range steeringCounters(counters) {
				counter(descSteer, v, verdict)
			}
		}
	}
	gauge(descInfo, 1, version)
	counter(descReloads, g.reloadsOK.Load(), "ok")
	counter(descReloads, g.reloadsRefused.Load(), "refused")
}

// startMetrics serves /metrics when metrics.listen is set.
func (g *gateway) startMetrics() error {
	if g.cfg.Metrics.Listen == "" {
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(gatewayCollector{g}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if g.cfg.Metrics.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	}
	l, err := net.Listen("tcp", g.cfg.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", g.cfg.Metrics.Listen, err)
	}
	g.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := g.metrics.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("metrics server", zap.Error(err))
		}
	}()
	return nil
}
