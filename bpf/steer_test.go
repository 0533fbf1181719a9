package bpf

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inFreshNetns runs fn on a thread in a new, empty network namespace with a
// dummy interface "lan0", and throws the namespace away afterwards.
func inFreshNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and eBPF")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is left locked and so dies with the goroutine: it
		// never returns to the pool in the test namespace.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer ns.Close()
		lo, _ := netlink.LinkByName("lo")
		netlink.LinkSetUp(lo)
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "peer0"}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Errorf("add veth lan0: %v", err)
			return
		}
		fn()
	}()
	<-done
}

func transparentListener(t *testing.T, addr string) *net.TCPListener {
	t.Helper()
	network := "tcp4"
	if strings.HasPrefix(addr, "[") {
		network = "tcp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			if network == "tcp4" {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			}
		})
		return serr
	}}
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	return l.(*net.TCPListener)
}

func TestAttachAndClose(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			inFreshNetns(t, func() {
				testAttachAndClose(t, mode)
			})
		})
	}
}

func testAttachAndClose(t *testing.T, mode Mode) {
	s, err := Attach(Config{
		Interfaces: []string{"lan0"},
		Ports:      []uint16{443, 8443},
		Bypass:     []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
		Mode:       mode,
	})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if got := s.Attachments()["lan0"]; got != mode {
		t.Errorf("lan0 attached as %q, want %q", got, mode)
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l := transparentListener(t, addr)
		defer l.Close()
		if err := s.SetListener(l); err != nil {
			t.Errorf("SetListener(%s): %v", addr, err)
		}
	}
	if n := countRules(t); n != 2 {
		t.Errorf("%d fwmark rules after Attach, want 2 (IPv4 and IPv6)", n)
	}
	if _, err := s.Counters(); err != nil {
		t.Errorf("Counters: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := countRules(t); n != 0 {
		t.Errorf("%d fwmark rules left after Close", n)
	}
	lan, _ := netlink.LinkByName("lan0")
	res, err := link.QueryPrograms(link.QueryOptions{Target: lan.Attrs().Index,
		Attach: ebpf.AttachTCXIngress})
	if err == nil && len(res.Programs) > 0 {
		t.Errorf("%d tcx programs left on lan0", len(res.Programs))
	}
	if present, _ := hasClsact(lan.Attrs().Index); present {
		t.Error("clsact qdisc left on lan0")
	}
}

func countRules(t *testing.T) int {
	t.Helper()
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rules {
		if r.Table == DefaultTable && r.Mark == DefaultMark {
			n++
		}
	}
	return n
}

// An MPTCP listener cannot go into a sockmap; the error must say which
// listener and slot.
func TestSetListenerRejectsMPTCP(t *testing.T) {
	inFreshNetns(t, func() {
		s, err := Attach(Config{Interfaces: []string{"lan0"}, Ports: []uint16{443}})
		if err != nil {
			t.Fatalf("Attach: %v", err)
		}
		defer s.Close()
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(true)
		l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		err = s.SetListener(l.(*net.TCPListener))
		if err == nil {
			t.Skip("kernel accepted an MPTCP listener (MPTCP not built in?)")
		}
		if !strings.Contains(err.Error(), "slot 0") {
			t.Errorf("error %q does not name the slot", err)
		}
	})
}

func TestAttachErrors(t *testing.T) {
	inFreshNetns(t, func() {
		tests := []struct {
			name string
			cfg  Config
			want string
		}{
			{"unknown interface", Config{Interfaces: []string{"nope0"}, Ports: []uint16{443}},
				`"nope0"`},
			{"no interfaces", Config{Ports: []uint16{443}}, "no interfaces"},
			{"no ports", Config{Interfaces: []string{"lan0"}}, "no ports"},
		}
		for _, tt := range tests {
			s, err := Attach(tt.cfg)
			if err == nil {
				s.Close()
				t.Errorf("%s: Attach succeeded", tt.name)
				continue
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: error %q does not contain %s", tt.name, err, tt.want)
			}
		}
		// A failed Attach leaves no rule behind.
		if n := countRules(t); n != 0 {
			t.Errorf("%d rules left after failed Attach calls", n)
		}
	})
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAuto, "auto": ModeAuto, "tcx": ModeTCX,
		"legacy": ModeLegacy} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseMode("xdp"); err == nil || !strings.Contains(err.Error(), `"xdp"`) {
		t.Errorf("ParseMode(xdp) error = %v", err)
	}
}

// What a killed legacy run leaves (filter, clsact qdisc, rules, routes) is
// removed by Cleanup, and by the next Attach in TCX mode.
func TestCleanupAfterKill(t *testing.T) {
	for _, next := range []string{"cleanup", "tcx attach"} {
		t.Run(next, func(t *testing.T) {
			inFreshNetns(t, func() {
				cfg := Config{Interfaces: []string{"lan0"}, Ports: []uint16{443},
					Mode: ModeLegacy}
				s, err := Attach(cfg)
				if err != nil {
					t.Fatalf("Attach: %v", err)
				}
				// As after SIGKILL: the program and maps go, the filter
				// (holding its own reference), qdisc and routing stay.
				s.objs.Close()
				lan, _ := net.InterfaceByName("lan0")
				if present, _ := hasClsact(lan.Index); !present || countRules(t) != 2 {
					t.Fatal("the simulated kill left nothing behind to clean")
				}
				if next == "cleanup" {
					if err := Cleanup(cfg); err != nil {
						t.Fatalf("Cleanup: %v", err)
					}
				} else {
					cfg.Mode = ModeTCX
					s2, err := Attach(cfg)
					if err != nil {
						t.Fatalf("Attach after kill: %v", err)
					}
					if err := s2.Close(); err != nil {
						t.Fatalf("Close: %v", err)
					}
				}
				if present, _ := hasClsact(lan.Index); present {
					t.Error("clsact qdisc left behind")
				}
				if n := countRules(t); n != 0 {
					t.Errorf("%d rules left behind", n)
				}
			})
		})
	}
}
