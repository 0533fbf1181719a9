package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"

	"github.com/snigate/snigate/bpf"
	"github.com/snigate/snigate/dataplane"
	gwtls "github.com/snigate/snigate/tls"
)

// Config is the daemon's configuration file, after defaults and validation.
type Config struct {
	Intercept Intercept `yaml:"intercept"`
	// Listen are the transparent listeners, one per address family.
	Listen   []addrPort `yaml:"listen"`
	CA       CAFiles    `yaml:"ca"`
	Upstream Upstream   `yaml:"upstream"`
	Hello    Hello      `yaml:"hello"`
	Policy   PolicySpec `yaml:"policy"`
	Log      LogSpec    `yaml:"log"`
	Shutdown Shutdown   `yaml:"shutdown"`
	Relay    RelaySpec  `yaml:"relay"`
	// Control is the unix socket that "snigate status" and "snigate
	// reload" talk to.
	Control socketPath  `yaml:"control"`
	Metrics MetricsSpec `yaml:"metrics"`
}

// MetricsSpec places the Prometheus endpoint; an empty Listen turns it off.
type MetricsSpec struct {
	Listen string `yaml:"listen"`
	// Pprof also serves Go's profiler under /debug/pprof/ on the same
	// address, for finding what a busy gateway spends its CPU on.
	Pprof bool `yaml:"pprof"`
}

type Intercept struct {
	Interfaces []string   `yaml:"interfaces"`
	Ports      []port     `yaml:"ports"`
	Bypass     []prefix   `yaml:"bypass"`
	Attach     attachMode `yaml:"attach"`
	// BlockQUIC drops UDP to the intercepted ports so that browsers fall
	// back from QUIC to TCP, where the policy applies.
	BlockQUIC bool   `yaml:"block_quic"`
	Mark      uint32 `yaml:"mark"`
	Table     int    `yaml:"table"`
}

type CAFiles struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

type Upstream struct {
	Roots       []string `yaml:"roots"`
	DialTimeout duration `yaml:"dial_timeout"`
	// CertCache bounds the forged certificates kept in memory.
	CertCache int `yaml:"cert_cache"`
	// VerifyFailure is what a client sees when the upstream certificate
	// fails verification: reject (an alert) or mimic (an untrusted
	// certificate, so the browser shows its own error page).
	VerifyFailure verifyFailure `yaml:"verify_failure"`
	// KeyExchange is hybrid (post-quantum X25519MLKEM768 first) or
	// classic (X25519 and NIST curves), for both legs of a bumped
	// connection.
	KeyExchange keyExchange `yaml:"key_exchange"`
}

type Hello struct {
	Timeout  duration `yaml:"timeout"`
	MaxBytes int      `yaml:"max_bytes"`
}

type PolicySpec struct {
	Rules     []RuleSpec `yaml:"rules"`
	NoSNI     action     `yaml:"no_sni"`
	NotTLS    action     `yaml:"not_tls"`
	Malformed action     `yaml:"malformed"`
	Default   action     `yaml:"default"`
}

type RuleSpec struct {
	SNI    []string `yaml:"sni"`
	Action action   `yaml:"action"`
	// AddRequestHeaders are set on every HTTP request of a bumped
	// connection the rule matches, such as X-GoogApps-Allowed-Domains.
	AddRequestHeaders headers `yaml:"add_request_headers"`
	line              int
}

type LogSpec struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

type Shutdown struct {
	Drain duration `yaml:"drain"`
}

type RelaySpec struct {
	// HalfCloseTimeout is how long a relayed connection may stay open
	// after one side has closed its direction.
	HalfCloseTimeout duration `yaml:"half_close_timeout"`
}

// defaultConfig is what an empty file means: the office default of splicing
// Google Cloud IAP tunnels and the mutual-TLS Google endpoints (a bump would
// break their client certificates) and bumping everything else.
func defaultConfig() Config {
	return Config{
		Intercept: Intercept{Ports: []port{443}, Attach: attachMode(bpf.ModeAuto),
			BlockQUIC: true},
		Listen: []addrPort{
			addrPort(netip.MustParseAddrPort("127.0.0.1:15443")),
			addrPort(netip.MustParseAddrPort("[::1]:15443")),
		},
		CA: CAFiles{Cert: "/var/lib/snigate/ca.crt", Key: "/var/lib/snigate/ca.key"},
		Upstream: Upstream{DialTimeout: duration(dataplane.DefaultDialTimeout),
			CertCache: 10000},
		Hello: Hello{
			Timeout:  duration(dataplane.DefaultHelloTimeout),
			MaxBytes: dataplane.DefaultMaxHello,
		},
		Policy: PolicySpec{
			Rules: []RuleSpec{{
				SNI: []string{"tunnel.cloudproxy.app", "*.tunnel.cloudproxy.app",
					"*.mtls.googleapis.com"},
				Action: action(dataplane.ActionSplice),
			}},
			NoSNI:     action(dataplane.ActionSplice),
			NotTLS:    action(dataplane.ActionBlock),
			Malformed: action(dataplane.ActionBlock),
			Default:   action(dataplane.ActionBump),
		},
		Log:      LogSpec{Level: "info", Format: "auto"},
		Shutdown: Shutdown{Drain: duration(5 * time.Second)},
		Relay:    RelaySpec{HalfCloseTimeout: duration(dataplane.DefaultHalfCloseTimeout)},
		Control:  defaultControlPath,
	}
}

// LoadConfig reads and validates the file. Every error names the file, the
// line and the offending value.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := parseConfig(data)
	if err != nil {
		return nil, prefixFile(path, data, err)
	}
	return cfg, nil
}

func parseConfig(data []byte) (*Config, error) {
	cfg := defaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// A list given in the file replaces the default list as a whole, so
	// "rules: []" means no rules.
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func (c *Config) validate() error {
	if len(c.Intercept.Interfaces) == 0 {
		return errors.New("intercept.interfaces: at least one LAN interface is required")
	}
	if len(c.Intercept.Ports) == 0 {
		return errors.New("intercept.ports: at least one port is required")
	}
	if len(c.Listen) == 0 {
		return errors.New("listen: at least one address is required")
	}
	families := map[bool]string{}
	for _, a := range c.Listen {
		is4 := netip.AddrPort(a).Addr().Is4()
		if prev, ok := families[is4]; ok {
			return fmt.Errorf("listen: %s and %s are of one address family; "+
				"give one listener per family", prev, a)
		}
		families[is4] = a.String()
	}
	for _, f := range []struct {
		key string
		a   action
	}{{"not_tls", c.Policy.NotTLS}, {"malformed", c.Policy.Malformed}} {
		if dataplane.Action(f.a) == dataplane.ActionBump {
			return fmt.Errorf("policy.%s: bump needs a TLS hello; use splice or block", f.key)
		}
	}
	if _, err := c.policy(); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	return nil
}

// policy builds the dataplane policy; a bad rule is reported with its line.
func (c *Config) policy() (*dataplane.Policy, error) {
	pc := dataplane.PolicyConfig{
		NoSNI:     dataplane.Action(c.Policy.NoSNI),
		NotTLS:    dataplane.Action(c.Policy.NotTLS),
		Malformed: dataplane.Action(c.Policy.Malformed),
		Default:   dataplane.Action(c.Policy.Default),
	}
	for i, r := range c.Policy.Rules {
		rule := dataplane.Rule{Names: r.SNI, Action: dataplane.Action(r.Action)}
		if _, err := dataplane.NewPolicy(dataplane.PolicyConfig{
			Rules: []dataplane.Rule{rule}, NoSNI: pc.NoSNI, NotTLS: pc.NotTLS,
			Malformed: pc.Malformed, Default: pc.Default,
		}); err != nil {
			msg := strings.TrimPrefix(err.Error(), "rule 0: ")
			return nil, &lineError{line: r.line, msg: fmt.Sprintf("rules[%d]: %s", i, msg)}
		}
		pc.Rules = append(pc.Rules, rule)
	}
	return dataplane.NewPolicy(pc)
}

func (c *Config) usesBump() bool {
	if c.Policy.Default == action(dataplane.ActionBump) ||
		c.Policy.NoSNI == action(dataplane.ActionBump) {
		return true
	}
	for _, r := range c.Policy.Rules {
		if r.Action == action(dataplane.ActionBump) {
			return true
		}
	}
	return false
}

// steeringConfig is what the eBPF loader needs.
func (c *Config) steeringConfig() bpf.Config {
	return bpf.Config{
		Interfaces: c.Intercept.Interfaces,
		Ports:      c.ports(),
		Bypass:     c.bypass(),
		Mode:       bpf.Mode(c.Intercept.Attach),
		Mark:       c.Intercept.Mark,
		Table:      c.Intercept.Table,
		BlockQUIC:  c.Intercept.BlockQUIC,
	}
}

func (c *Config) ports() []uint16 {
	out := make([]uint16, len(c.Intercept.Ports))
	for i, p := range c.Intercept.Ports {
		out[i] = uint16(p)
	}
	return out
}

func (c *Config) bypass() []netip.Prefix {
	out := make([]netip.Prefix, len(c.Intercept.Bypass))
	for i, p := range c.Intercept.Bypass {
		out[i] = netip.Prefix(p)
	}
	return out
}

// lineError is a validation error at a line of the file.
type lineError struct {
	line int
	msg  string
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

func errAt(n *yaml.Node, format string, args ...any) error {
	return &lineError{line: n.Line, msg: fmt.Sprintf(format, args...)}
}

var (
	yamlLine     = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	wrongType    = regexp.MustCompile("^cannot unmarshal !!\\w+ `(.*)` into (\\S+)$")
)

// prefixFile turns the decoder's and the validator's errors into
// "FILE:LINE: message" lines, one per problem. data is the file, for the
// key a problem is under.
func prefixFile(path string, data []byte, err error) error {
	text := strings.Split(string(data), "\n")
	var lines []string
	var te *yaml.TypeError
	var le *lineError
	switch {
	case errors.As(err, &te):
		lines = te.Errors
	case errors.As(err, &le):
		return fmt.Errorf("%s:%d: %s", path, le.line, withSection(le.msg, text, le.line))
	default:
		lines = []string{err.Error()}
	}
	for i, l := range lines {
		m := yamlLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			lines[i] = path + ": " + l
			continue
		}
		line, _ := strconv.Atoi(m[1])
		msg := m[2]
		if u := unknownField.FindStringSubmatch(msg); u != nil {
			msg = withSection(fmt.Sprintf("unknown key %q", u[1]), text, line)
		} else if w := wrongType.FindStringSubmatch(msg); w != nil {
			msg = fmt.Sprintf("%s: %q is not %s", keyPath(text, line), w[1], goTypeText(w[2]))
		}
		lines[i] = path + ":" + m[1] + ": " + msg
	}
	return errors.New(strings.Join(lines, "\n"))
}

// withSection adds the section holding the key of line to an unknown-key
// message.
func withSection(msg string, text []string, line int) string {
	if !strings.HasPrefix(msg, "unknown key") {
		return msg
	}
	if p := keyPath(text, line); strings.Contains(p, ".") {
		return msg + " in " + p[:strings.LastIndex(p, ".")]
	}
	return msg
}

// keyPath names the key on line (1-based) of a block-style YAML file with
// the keys above it, "policy.rules[].action", by indentation. It is for
// messages only, and gives up ("the value") on what it cannot read.
func keyPath(text []string, line int) string {
	if line < 1 || line > len(text) {
		return "the value"
	}
	var path []string
	indent := -1
	for i := line - 1; i >= 0; i-- {
		raw := text[i]
		trimmed := strings.TrimLeft(raw, " ")
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		at := len(raw) - len(trimmed)
		if indent >= 0 && at >= indent {
			continue
		}
		item := strings.HasPrefix(trimmed, "- ")
		key, _, ok := strings.Cut(strings.TrimPrefix(trimmed, "- "), ":")
		if !ok || strings.ContainsAny(key, " \"'[{") {
			if item {
				path = append(path, "[]")
				indent = at
				continue
			}
			return "the value"
		}
		// "- key: v" starts a list item: key is the one asked about only
		// on the line itself, and a sibling of it for the lines below.
		if !item || i == line-1 {
			path = append(path, key)
		}
		if item {
			path = append(path, "[]")
		}
		indent = at
	}
	slices.Reverse(path)
	return strings.ReplaceAll(strings.Join(path, "."), ".[]", "[]")
}

// goTypeText says in words what a value of the Go type named t is.
func goTypeText(t string) string {
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list (write [a, b])"
	case strings.HasPrefix(t, "map[") || strings.HasPrefix(t, "main."):
		return "a mapping of keys to values"
	case t == "bool":
		return "true or false"
	case strings.HasPrefix(t, "int") || strings.HasPrefix(t, "uint"):
		return "a whole number"
	case t == "string":
		return "a string"
	}
	return "the right kind of value"
}

// Scalar types that check their value while decoding, so the error carries
// the line.

type action dataplane.Action

func (a *action) UnmarshalYAML(n *yaml.Node) error {
	v, err := dataplane.ParseAction(n.Value)
	if err != nil {
		return errAt(n, "%v", err)
	}
	*a = action(v)
	return nil
}

func (r *RuleSpec) UnmarshalYAML(n *yaml.Node) error {
	type plain RuleSpec
	var p plain
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	*r = RuleSpec(p)
	r.line = n.Line
	if len(r.SNI) == 0 {
		return errAt(n, "rule has no sni names")
	}
	if r.Action == 0 {
		return errAt(n, "rule has no action")
	}
	if len(r.AddRequestHeaders) > 0 && dataplane.Action(r.Action) != dataplane.ActionBump {
		return errAt(n, "add_request_headers needs action bump: a %s rule never sees "+
			"the requests", dataplane.Action(r.Action))
	}
	return nil
}

// decodeStrict decodes a mapping node into v, a pointer to a struct, and
// rejects keys v has no field for. Node.Decode alone would ignore them: the
// decoder's KnownFields setting does not reach custom unmarshalers.
func decodeStrict(n *yaml.Node, v any) error {
	if n.Kind == yaml.MappingNode {
		known := map[string]bool{}
		t := reflect.TypeOf(v).Elem()
		for i := range t.NumField() {
			if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag != "" {
				known[tag] = true
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; !known[k.Value] {
				return errAt(k, "unknown key %q", k.Value)
			}
		}
	}
	return n.Decode(v)
}

// valueOf returns the value node of key in a mapping node, or nil.
func valueOf(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func (s *Intercept) UnmarshalYAML(n *yaml.Node) error {
	type plain Intercept
	p := plain(*s)
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i, name := range p.Interfaces {
		at := valueOf(n, "interfaces")
		if at != nil && i < len(at.Content) {
			at = at.Content[i]
		}
		switch {
		case name == "" || len(name) >= 16 || strings.ContainsAny(name, "/ \t"):
			return errAt(at, "interface %q is not an interface name", name)
		case name == "lo":
			return errAt(at, "interface lo is not a LAN interface")
		case seen[name]:
			return errAt(at, "interface %q is listed twice", name)
		}
		seen[name] = true
	}
	// 253-255 are the kernel's default, main and local tables: a local
	// default route there would swallow all forwarded traffic.
	if p.Table < 0 || p.Table >= 253 && p.Table <= 255 {
		return errAt(valueOf(n, "table"), "table %d is reserved or invalid; "+
			"use a free table number such as %d", p.Table, bpf.DefaultTable)
	}
	*s = Intercept(p)
	return nil
}

func (h *Hello) UnmarshalYAML(n *yaml.Node) error {
	type plain Hello
	p := plain(*h)
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	if p.MaxBytes < 512 || p.MaxBytes > dataplane.DefaultMaxHello {
		return errAt(valueOf(n, "max_bytes"), "max_bytes %d not in 512-%d", p.MaxBytes,
			dataplane.DefaultMaxHello)
	}
	*h = Hello(p)
	return nil
}

func (u *Upstream) UnmarshalYAML(n *yaml.Node) error {
	type plain Upstream
	p := plain(*u)
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	if p.CertCache < 1 {
		return errAt(valueOf(n, "cert_cache"), "cert_cache %d is not a positive count",
			p.CertCache)
	}
	*u = Upstream(p)
	return nil
}

func (l *LogSpec) UnmarshalYAML(n *yaml.Node) error {
	type plain LogSpec
	p := plain(*l)
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	if _, err := zapcore.ParseLevel(p.Level); err != nil {
		return errAt(valueOf(n, "level"), "level %q is not debug, info, warn or error",
			p.Level)
	}
	switch p.Format {
	case "auto", "json", "console", "journal":
	default:
		return errAt(valueOf(n, "format"), "format %q is not auto, json, console or journal",
			p.Format)
	}
	*l = LogSpec(p)
	return nil
}

func (m *MetricsSpec) UnmarshalYAML(n *yaml.Node) error {
	type plain MetricsSpec
	p := plain(*m)
	if err := decodeStrict(n, &p); err != nil {
		return err
	}
	if p.Listen != "" {
		if _, err := netip.ParseAddrPort(p.Listen); err != nil {
			return errAt(valueOf(n, "listen"), "listen %q is not an address:port", p.Listen)
		}
	}
	*m = MetricsSpec(p)
	return nil
}

type socketPath string

func (s *socketPath) UnmarshalYAML(n *yaml.Node) error {
	if !strings.HasPrefix(n.Value, "/") {
		return errAt(n, "control %q is not an absolute socket path", n.Value)
	}
	*s = socketPath(n.Value)
	return nil
}

type port uint16

func (p *port) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.Atoi(n.Value)
	if err != nil || v < 1 || v > 65535 {
		return errAt(n, "port %q is not a number in 1-65535", n.Value)
	}
	*p = port(v)
	return nil
}

type prefix netip.Prefix

func (p *prefix) UnmarshalYAML(n *yaml.Node) error {
	v, err := netip.ParsePrefix(n.Value)
	if err != nil {
		a, aerr := netip.ParseAddr(n.Value)
		if aerr != nil {
			return errAt(n, "%q is not an address or prefix", n.Value)
		}
		v = netip.PrefixFrom(a, a.BitLen())
	}
	*p = prefix(v)
	return nil
}

type addrPort netip.AddrPort

func (a *addrPort) UnmarshalYAML(n *yaml.Node) error {
	v, err := netip.ParseAddrPort(n.Value)
	if err != nil {
		return errAt(n, "%q is not an address:port", n.Value)
	}
	*a = addrPort(v)
	return nil
}

func (a addrPort) String() string { return netip.AddrPort(a).String() }

type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v <= 0 {
		return errAt(n, "%q is not a positive duration such as 10s", n.Value)
	}
	*d = duration(v)
	return nil
}

type verifyFailure gwtls.VerifyFailureMode

func (v *verifyFailure) UnmarshalYAML(n *yaml.Node) error {
	m, err := gwtls.ParseVerifyFailureMode(n.Value)
	if err != nil {
		return errAt(n, "verify_failure %q is not reject or mimic", n.Value)
	}
	*v = verifyFailure(m)
	return nil
}

type keyExchange gwtls.KeyExchange

func (k *keyExchange) UnmarshalYAML(n *yaml.Node) error {
	m, err := gwtls.ParseKeyExchange(n.Value)
	if err != nil {
		return errAt(n, "key_exchange %q is not hybrid or classic", n.Value)
	}
	*k = keyExchange(m)
	return nil
}

// headers are request headers a rule adds; names and values are checked
// as HTTP allows them, so a typo cannot produce a broken request.
type headers http.Header

func (h *headers) UnmarshalYAML(n *yaml.Node) error {
	var m map[string]string
	if err := n.Decode(&m); err != nil {
		return errAt(n, "add_request_headers must map header names to values")
	}
	out := http.Header{}
	for name, value := range m {
		if !validHeaderName(name) {
			return errAt(n, "header name %q is not a valid HTTP field name", name)
		}
		if managedHeader(name) {
			return errAt(n, "header %s cannot be added: the proxy sets it for each "+
				"request or connection", name)
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			return errAt(n, "header %s: value %q contains a line break or NUL", name, value)
		}
		out.Set(name, value)
	}
	*h = headers(out)
	return nil
}

// managedHeader reports whether name is a header the HTTP proxy sets or
// drops on its own (the request target, message framing, hop-by-hop
// fields), where an added value would be silently lost.
func managedHeader(name string) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
		"Proxy-Connection", "Te", "Trailer", "Upgrade":
		return true
	}
	return false
}

// validHeaderName reports whether name is an HTTP token (RFC 9110,
// Section 5.1).
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

type attachMode bpf.Mode

func (m *attachMode) UnmarshalYAML(n *yaml.Node) error {
	v, err := bpf.ParseMode(n.Value)
	if err != nil {
		return errAt(n, "%v", err)
	}
	*m = attachMode(v)
	return nil
}
