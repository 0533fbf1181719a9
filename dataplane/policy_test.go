package dataplane

import (
	"strings"
	"testing"
)

func mustPolicy(t testing.TB, cfg PolicyConfig) *Policy {
	t.Helper()
	p, err := NewPolicy(cfg)
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	return p
}

func defaultTestPolicy(t testing.TB) *Policy {
	return mustPolicy(t, PolicyConfig{
		Rules: []Rule{
			{Names: []string{"tunnel.cloudproxy.app", "*.tunnel.cloudproxy.app",
				"*.mtls.googleapis.com"}, Action: ActionSplice},
			{Names: []string{"blocked.example.test"}, Action: ActionBlock},
			{Names: []string{"*.example.test"}, Action: ActionSplice},
			{Names: []string{"bumped.example.test"}, Action: ActionBump},
		},
		NoSNI: ActionSplice, NotTLS: ActionBlock, Malformed: ActionBlock, Default: ActionBump,
	})
}

func TestPolicyDecide(t *testing.T) {
	p := defaultTestPolicy(t)
	tests := []struct {
		name   string
		sni    string
		action Action
		rule   int
	}{
		{"exact", "tunnel.cloudproxy.app", ActionSplice, 0},
		{"case folded with trailing dot", "TUNNEL.CloudProxy.app.", ActionSplice, 0},
		{"subdomain", "a.tunnel.cloudproxy.app", ActionSplice, 0},
		{"deep subdomain", "x.y.z.tunnel.cloudproxy.app", ActionSplice, 0},
		{"mtls wildcard", "oauth2.mtls.googleapis.com", ActionSplice, 0},
		{"wildcard does not match its own domain", "mtls.googleapis.com", ActionBump, -1},
		{"suffix without dot boundary", "eviltunnel.cloudproxy.app", ActionBump, -1},
		{"unrelated", "www.google.com", ActionBump, -1},
		{"first match wins over later wildcard", "blocked.example.test", ActionBlock, 1},
		{"earlier wildcard beats later exact", "bumped.example.test", ActionSplice, 2},
		{"punycode matched as sent", "xn--bcher-kva.example.test", ActionSplice, 2},
		{"empty", "", ActionBump, -1},
		{"only a dot", ".", ActionBump, -1},
		{"too long", strings.Repeat("a.", 130) + "test", ActionBump, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			action, rule := p.Decide([]byte(tt.sni))
			if action != tt.action || rule != tt.rule {
				t.Errorf("Decide(%q) = %s, rule %d; want %s, rule %d",
					tt.sni, action, rule, tt.action, tt.rule)
			}
		})
	}
}

func TestPolicyForClass(t *testing.T) {
	p := defaultTestPolicy(t)
	for c, want := range map[HelloClass]Action{
		HelloNoSNI: ActionSplice, HelloNotTLS: ActionBlock, HelloMalformed: ActionBlock,
	} {
		if got := p.ForClass(c); got != want {
			t.Errorf("ForClass(%s) = %s, want %s", c, got, want)
		}
	}
}

func TestNewPolicyRejects(t *testing.T) {
	ok := PolicyConfig{NoSNI: ActionSplice, NotTLS: ActionBlock, Malformed: ActionBlock,
		Default: ActionBump}
	tests := []struct {
		name  string
		rules []Rule
		want  string
	}{
		{"bad byte", []Rule{{Names: []string{"exa mple.com"}, Action: ActionBump}}, `"exa mple.com"`},
		{"empty label", []Rule{{Names: []string{"a..b"}, Action: ActionBump}}, `"a..b"`},
		{"bare wildcard", []Rule{{Names: []string{"*."}, Action: ActionBump}}, `"*."`},
		{"inner wildcard", []Rule{{Names: []string{"a.*.b"}, Action: ActionBump}}, `"a.*.b"`},
		{"no names", []Rule{{Action: ActionBump}}, "rule 0: no names"},
		{"no action", []Rule{{Names: []string{"a.b"}}}, "rule 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			cfg.Rules = tt.rules
			_, err := NewPolicy(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewPolicy error = %v, want one containing %s", err, tt.want)
			}
		})
	}
}

func TestPolicyDecideAllocs(t *testing.T) {
	p := defaultTestPolicy(t)
	name := []byte("Deep.Sub.Tunnel.CloudProxy.App.")
	allocs := testing.AllocsPerRun(100, func() { p.Decide(name) })
	if allocs != 0 {
		t.Errorf("Decide allocates %.1f times per call, want 0", allocs)
	}
}

func BenchmarkPolicyDecide(b *testing.B) {
	p := defaultTestPolicy(b)
	name := []byte("www.example.com")
	b.ReportAllocs()
	for b.Loop() {
		p.Decide(name)
	}
}
