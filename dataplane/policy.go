package dataplane

import (
	"fmt"
	"strings"
)

// Action is what happens to a connection.
type Action uint8

const (
	// ActionSplice dials the original destination, replays the hello and
	// moves bytes kernel to kernel: the client sees the real server.
	ActionSplice Action = iota + 1
	// ActionBump terminates TLS with a forged certificate after verifying
	// the real server.
	ActionBump
	// ActionBlock resets the connection.
	ActionBlock
)

// ParseAction returns the Action named s.
func ParseAction(s string) (Action, error) {
	switch s {
	case "splice":
		return ActionSplice, nil
	case "bump":
		return ActionBump, nil
	case "block":
		return ActionBlock, nil
	}
	return 0, fmt.Errorf("action %q is not splice, bump or block", s)
}

func (a Action) String() string {
	switch a {
	case ActionSplice:
		return "splice"
	case ActionBump:
		return "bump"
	case ActionBlock:
		return "block"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Rule sends the connections whose server name matches one of Names to
// Action. A name is either exact ("example.com") or a wildcard
// ("*.example.com") that matches any name below that domain, at any depth,
// but not the domain itself.
type Rule struct {
	Names  []string
	Action Action
}

// PolicyConfig is the ordered rule list and the actions for connections no
// rule can judge.
type PolicyConfig struct {
	Rules     []Rule
	NoSNI     Action // a TLS hello without a server name
	NotTLS    Action // first bytes are not a TLS handshake
	Malformed Action // claims TLS but is not a well-formed hello
	Default   Action // a named hello no rule matched
}

// Policy decides an action for a server name. Rules are tried in order and
// the first match wins. Matching is case-insensitive, ignores one trailing
// dot, and allocates nothing. A Policy is immutable and safe for concurrent
// use.
type Policy struct {
	cfg PolicyConfig
	// exact and wildcard map a lowercase name (for a wildcard, the suffix
	// after "*.") to the index of the first rule that names it.
	exact    map[string]int
	wildcard map[string]int
}

// maxNameLen is the longest DNS name in presentation form (RFC 1035,
// Section 2.3.4, without the trailing dot).
const maxNameLen = 253

// NewPolicy validates cfg and builds the lookup tables. An error names the
// offending rule and name.
func NewPolicy(cfg PolicyConfig) (*Policy, error) {
	p := &Policy{cfg: cfg, exact: map[string]int{}, wildcard: map[string]int{}}
	for _, a := range []Action{cfg.NoSNI, cfg.NotTLS, cfg.Malformed, cfg.Default} {
		if a < ActionSplice || a > ActionBlock {
			return nil, fmt.Errorf("policy fallback %s is not splice, bump or block", a)
		}
	}
	for i, r := range cfg.Rules {
		if r.Action < ActionSplice || r.Action > ActionBlock {
			return nil, fmt.Errorf("rule %d: %s is not splice, bump or block", i, r.Action)
		}
		if len(r.Names) == 0 {
			return nil, fmt.Errorf("rule %d: no names", i)
		}
		for _, name := range r.Names {
			if err := p.add(i, name); err != nil {
				return nil, fmt.Errorf("rule %d: %w", i, err)
			}
		}
	}
	return p, nil
}

func (p *Policy) add(rule int, pattern string) error {
	name := strings.ToLower(strings.TrimSuffix(pattern, "."))
	table := p.exact
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name, table = rest, p.wildcard
	}
	if err := checkPattern(name); err != nil {
		return fmt.Errorf("name %q: %w", pattern, err)
	}
	// An earlier rule naming the same pattern already wins every match.
	if _, seen := table[name]; !seen {
		table[name] = rule
	}
	return nil
}

// checkPattern accepts the hostnames a client can send as SNI: labels of
// letters, digits, hyphens and underscores (seen in the wild), punycode
// included as plain ASCII.
func checkPattern(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("length %d not in 1-%d", len(name), maxNameLen)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("label %q: length %d not in 1-63", label, len(label))
		}
		for _, c := range []byte(label) {
			if !hostnameByte(c) {
				return fmt.Errorf("label %q: byte %q cannot appear in a hostname", label, c)
			}
		}
	}
	return nil
}

func hostnameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_'
}

// Decide returns the action for serverName and the index of the rule that
// chose it, or -1 when the default applied. serverName may carry one
// trailing dot and any case.
func (p *Policy) Decide(serverName []byte) (Action, int) {
	if n := len(serverName); n > 0 && serverName[n-1] == '.' {
		serverName = serverName[:n-1]
	}
	if len(serverName) == 0 || len(serverName) > maxNameLen {
		return p.cfg.Default, -1
	}
	var buf [maxNameLen]byte
	name := buf[:len(serverName)]
	for i, c := range serverName {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		name[i] = c
	}

	best := -1
	if i, ok := p.exact[string(name)]; ok {
		best = i
	}
	// Every proper suffix after a dot is a candidate wildcard domain; the
	// lowest rule index among all matches is the first rule that matches.
	for i, c := range name {
		if c != '.' {
			continue
		}
		if r, ok := p.wildcard[string(name[i+1:])]; ok && (best < 0 || r < best) {
			best = r
		}
	}
	if best < 0 {
		return p.cfg.Default, -1
	}
	return p.cfg.Rules[best].Action, best
}

// ForClass returns the fallback action for hellos that carry no usable name.
func (p *Policy) ForClass(c HelloClass) Action {
	switch c {
	case HelloNoSNI:
		return p.cfg.NoSNI
	case HelloNotTLS:
		return p.cfg.NotTLS
	case HelloMalformed:
		return p.cfg.Malformed
	}
	return p.cfg.Default
}
