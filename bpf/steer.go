package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Mode says how the program is attached to an interface.
type Mode string

const (
	// ModeAuto uses TCX where the kernel has it (6.6+) and falls back to a
	// clsact qdisc with a cls_bpf filter otherwise.
	ModeAuto Mode = "auto"
	// ModeTCX attaches through a TCX link owned by this process: it goes
	// away with the process, however the process ends.
	ModeTCX Mode = "tcx"
	// ModeLegacy attaches a direct-action cls_bpf filter under a clsact
	// qdisc through netlink, for kernels before 6.6.
	ModeLegacy Mode = "legacy"
)

// ParseMode returns the Mode named s.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeTCX, ModeLegacy:
		return m, nil
	case "":
		return ModeAuto, nil
	}
	return "", fmt.Errorf("attach mode %q is not auto, tcx or legacy", s)
}

// Defaults for Config fields left zero.
const (
	DefaultMark         = 0x5e1
	DefaultTable        = 5443
	DefaultRulePriority = 5443
)

// Config says where and what to steer.
type Config struct {
	// Interfaces are the LAN interfaces whose ingress is steered.
	Interfaces []string
	// Ports are the intercepted TCP destination ports.
	Ports []uint16
	// Bypass lists destination prefixes that are never steered.
	Bypass []netip.Prefix
	// Mode selects the attach mechanism; zero means ModeAuto.
	Mode Mode
	// Mark is the packet mark (and mask) of steered packets; zero means
	// DefaultMark. It must not collide with marks used elsewhere on the
	// gateway.
	Mark uint32
	// Table is the routing table holding the local default routes; zero
	// means DefaultTable.
	Table int
	// RulePriority is the priority of the fwmark rules; zero means
	// DefaultRulePriority.
	RulePriority int
	// BlockQUIC drops UDP to the intercepted ports, so that browsers fall
	// back from QUIC to TCP, where the policy applies.
	BlockQUIC bool
}

func (c *Config) setDefaults() {
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
}

// Steering is the loaded program with its attachments and routing. Close
// undoes all of it. It is safe for concurrent use after Attach returns.
type Steering struct {
	cfg         Config
	objs        steerObjects
	attachments []attachment
	routing     *routing
}

// attachment is one interface's hook, whichever mode made it.
type attachment interface {
	Mode() Mode
	Interface() string
	Close() error
}

// Attach loads the program, fills its maps from cfg, installs the policy
// routing for the mark and attaches to every interface. Steering starts only
// once SetListener has been given a listener: until then the program
// forwards everything. On error nothing is left behind.
func Attach(cfg Config) (_ *Steering, err error) {
	cfg.setDefaults()
	if len(cfg.Interfaces) == 0 {
		return nil, errors.New("no interfaces to attach to")
	}
	if len(cfg.Ports) == 0 {
		return nil, errors.New("no ports to intercept")
	}
	s := &Steering{cfg: cfg}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.fillMaps(); err != nil {
		return nil, err
	}
	if s.routing, err = installRouting(cfg.Mark, cfg.Table, cfg.RulePriority); err != nil {
		return nil, err
	}
	for _, name := range cfg.Interfaces {
		a, err := attach(name, cfg.Mode, s.objs.SteerIngress)
		if err != nil {
			return nil, err
		}
		s.attachments = append(s.attachments, a)
	}
	return s, nil
}

func (s *Steering) load() error {
	spec, err := loadSteer()
	if err != nil {
		return fmt.Errorf("load steering program spec: %w", err)
	}
	if err := checkSpec(spec); err != nil {
		return err
	}
	if err := spec.Variables["steer_mark"].Set(s.cfg.Mark); err != nil {
		return fmt.Errorf("set steer_mark to %#x: %w", s.cfg.Mark, err)
	}
	var blockQUIC uint8
	if s.cfg.BlockQUIC {
		blockQUIC = 1
	}
	if err := spec.Variables["block_quic"].Set(blockQUIC); err != nil {
		return fmt.Errorf("set block_quic: %w", err)
	}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return fmt.Errorf("load steering program: %+v", verr)
		}
		return fmt.Errorf("load steering program: %w", err)
	}
	return nil
}

// checkSpec compares the object's maps with what the Go side writes into
// them, so a mismatch is reported by name before the kernel sees it.
func checkSpec(spec *ebpf.CollectionSpec) error {
	counters := spec.Maps["counters"]
	if want := uint32(steerCounterCOUNTER_MAX); counters.MaxEntries != want {
		return fmt.Errorf("map counters has %d entries, want %d", counters.MaxEntries, want)
	}
	if l := spec.Maps["listeners"]; l.ValueSize != 8 {
		// The sockmap value is the listener's fd written as 64 bits.
		return fmt.Errorf("map listeners has value size %d, want 8", l.ValueSize)
	}
	return nil
}

func (s *Steering) fillMaps() error {
	if max := int(s.objs.Ports.MaxEntries()); len(s.cfg.Ports) > max {
		return fmt.Errorf("%d ports to intercept, at most %d", len(s.cfg.Ports), max)
	}
	for _, p := range s.cfg.Ports {
		if err := s.objs.Ports.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("add port %d: %w", p, err)
		}
	}
	for _, p := range s.cfg.Bypass {
		if err := s.addBypass(p); err != nil {
			return err
		}
	}
	return nil
}

func (s *Steering) addBypass(p netip.Prefix) error {
	p = p.Masked()
	var err error
	if p.Addr().Is4() {
		key := steerLpmKey4{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As4()}
		err = s.objs.Bypass4.Put(key, uint8(1))
	} else {
		key := steerLpmKey6{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
		err = s.objs.Bypass6.Put(key, uint8(1))
	}
	if err != nil {
		return fmt.Errorf("add bypass prefix %s: %w", p, err)
	}
	return nil
}

// SetListener makes l the socket that new steered connections of its address
// family go to. The listener must be bound with IP_TRANSPARENT (IPv4) or
// IPV6_TRANSPARENT and must not be an MPTCP socket: a sockmap refuses those.
// The kernel removes the entry by itself when the listener closes, which is
// what makes a dead dataplane fail open.
func (s *Steering) SetListener(l *net.TCPListener) error {
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return fmt.Errorf("listener address %v is not TCP", l.Addr())
	}
	slot := uint32(0)
	if addr.IP.To4() == nil {
		slot = 1
	}
	raw, err := l.SyscallConn()
	if err != nil {
		return fmt.Errorf("listener %s: %w", addr, err)
	}
	var putErr error
	err = raw.Control(func(fd uintptr) {
		putErr = s.objs.Listeners.Put(slot, uint64(fd))
	})
	if err == nil {
		err = putErr
	}
	if err != nil {
		return fmt.Errorf("put listener %s in sockmap slot %d: %w", addr, slot, err)
	}
	return nil
}

// Counters is a snapshot of the program's packet counters, summed over CPUs.
type Counters struct {
	SteeredNew         uint64
	SteeredEstablished uint64
	Passed             uint64
	Bypassed           uint64
	NoListener         uint64
	AssignError        uint64
	Unparsed           uint64
	NotForwarded       uint64
	NoFlow             uint64
	FragmentDropped    uint64
	QUICDropped        uint64
}

// Counters reads and sums the per-CPU counters.
func (s *Steering) Counters() (Counters, error) {
	var c Counters
	fields := []*uint64{
		steerCounterCOUNTER_STEERED_NEW:         &c.SteeredNew,
		steerCounterCOUNTER_STEERED_ESTABLISHED: &c.SteeredEstablished,
		steerCounterCOUNTER_PASSED:              &c.Passed,
		steerCounterCOUNTER_BYPASSED:            &c.Bypassed,
		steerCounterCOUNTER_NO_LISTENER:         &c.NoListener,
		steerCounterCOUNTER_ASSIGN_ERROR:        &c.AssignError,
		steerCounterCOUNTER_UNPARSED:            &c.Unparsed,
		steerCounterCOUNTER_NOT_FORWARDED:       &c.NotForwarded,
		steerCounterCOUNTER_NO_FLOW:             &c.NoFlow,
		steerCounterCOUNTER_FRAGMENT_DROPPED:    &c.FragmentDropped,
		steerCounterCOUNTER_QUIC_DROPPED:        &c.QUICDropped,
	}
	var perCPU []uint64
	for i, f := range fields {
		if err := s.objs.Counters.Lookup(uint32(i), &perCPU); err != nil {
			return c, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			*f += v
		}
	}
	return c, nil
}

// Attachments lists the interfaces the program is attached to and how.
func (s *Steering) Attachments() map[string]Mode {
	m := make(map[string]Mode, len(s.attachments))
	for _, a := range s.attachments {
		m[a.Interface()] = a.Mode()
	}
	return m
}

// Close detaches from every interface, removes the policy routing and
// unloads the program. It returns the first error but always tries every
// step, so a partial failure leaves as little behind as possible.
func (s *Steering) Close() error {
	var errs []error
	for _, a := range s.attachments {
		if err := a.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from %s: %w", a.Interface(), err))
		}
	}
	s.attachments = nil
	if s.routing != nil {
		if err := s.routing.remove(); err != nil {
			errs = append(errs, err)
		}
		s.routing = nil
	}
	if err := s.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("unload steering program: %w", err))
	}
	return errors.Join(errs...)
}

// attach hooks prog into ifname's ingress in the given mode.
func attach(ifname string, mode Mode, prog *ebpf.Program) (attachment, error) {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("find interface %q: %w", ifname, err)
	}
	// A filter left by a previous run that was killed would otherwise run
	// next to the new attachment.
	staleRemoved, err := removeStaleFilters(iface)
	if err != nil {
		return nil, err
	}
	if mode == ModeTCX || mode == ModeAuto {
		a, err := attachTCX(iface, prog)
		if err == nil && staleRemoved {
			// The killed run was in legacy mode and left its clsact
			// qdisc; nobody else will remove it.
			err = removeEmptyClsact(iface)
		}
		if err == nil || mode == ModeTCX || !errors.Is(err, ebpf.ErrNotSupported) {
			return a, err
		}
	}
	return attachLegacy(iface, prog, staleRemoved)
}

// Cleanup removes what a run with cfg may have left behind when it was
// killed: its cls_bpf filters (and their clsact qdisc when nothing else is
// on it) and its policy routing. TCX links need nothing: they end with the
// process. It is what a service manager runs after the daemon stops, and it
// is harmless after a clean stop. Missing interfaces are skipped.
func Cleanup(cfg Config) error {
	cfg.setDefaults()
	var errs []error
	for _, name := range cfg.Interfaces {
		iface, err := net.InterfaceByName(name)
		if err != nil {
			continue
		}
		removed, err := removeStaleFilters(iface)
		if err == nil && removed {
			err = removeEmptyClsact(iface)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	routes, err := localRoutes(cfg.Table)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	stale := &routing{rules: markRules(cfg.Mark, cfg.Table, cfg.RulePriority), routes: routes}
	if err := stale.remove(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

type tcxAttachment struct {
	iface string
	link  link.Link
}

func attachTCX(iface *net.Interface, prog *ebpf.Program) (*tcxAttachment, error) {
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: iface.Index,
		Program:   prog,
		Attach:    ebpf.AttachTCXIngress,
	})
	if err != nil {
		return nil, fmt.Errorf("attach tcx to %s (ifindex %d): %w", iface.Name, iface.Index, err)
	}
	return &tcxAttachment{iface: iface.Name, link: l}, nil
}

func (a *tcxAttachment) Mode() Mode        { return ModeTCX }
func (a *tcxAttachment) Interface() string { return a.iface }
func (a *tcxAttachment) Close() error      { return a.link.Close() }
