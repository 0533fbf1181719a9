package bpf

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routing is the policy routing that delivers steered packets locally: a
// rule "fwmark M/M lookup T" and a local default route on lo in table T, for
// each address family. bpf_sk_assign alone is not enough: without a local
// route the forward path takes the packet and the assignment is lost.
type routing struct {
	rules  []*netlink.Rule
	routes []*netlink.Route
}

func markRules(mark uint32, table, priority int) []*netlink.Rule {
	var rules []*netlink.Rule
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		r := netlink.NewRule()
		r.Family = family
		r.Priority = priority
		r.Table = table
		r.Mark = mark
		mask := mark
		r.Mask = &mask
		rules = append(rules, r)
	}
	return rules
}

func localRoutes(table int) ([]*netlink.Route, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find loopback link: %w", err)
	}
	var routes []*netlink.Route
	for _, dst := range []string{"0.0.0.0/0", "::/0"} {
		_, ipnet, _ := net.ParseCIDR(dst)
		routes = append(routes, &netlink.Route{
			LinkIndex: lo.Attrs().Index,
			Dst:       ipnet,
			Table:     table,
			Type:      unix.RTN_LOCAL,
			Scope:     netlink.SCOPE_HOST,
		})
	}
	return routes, nil
}

// installRouting adds the rules and routes, first removing any left by a
// previous run that could not clean up.
func installRouting(mark uint32, table, priority int) (*routing, error) {
	routes, err := localRoutes(table)
	if err != nil {
		return nil, err
	}
	stale := &routing{rules: markRules(mark, table, priority), routes: routes}
	if err := stale.remove(); err != nil {
		return nil, fmt.Errorf("remove stale routing: %w", err)
	}

	r := &routing{}
	for _, route := range routes {
		if err := netlink.RouteAdd(route); err != nil {
			r.remove()
			return nil, fmt.Errorf("add local route %s to table %d: %w", route.Dst, table, err)
		}
		r.routes = append(r.routes, route)
	}
	for _, rule := range markRules(mark, table, priority) {
		if err := netlink.RuleAdd(rule); err != nil {
			r.remove()
			return nil, fmt.Errorf("add rule fwmark %#x lookup %d: %w", mark, table, err)
		}
		r.rules = append(r.rules, rule)
	}
	return r, nil
}

// remove deletes the rules before the routes, so no packet is ever sent to
// an empty table. Already missing entries are not errors.
func (r *routing) remove() error {
	var errs []error
	for _, rule := range r.rules {
		// Identical rules can pile up when earlier runs were killed; the
		// bound only guards against a kernel that never says ENOENT.
		for range 64 {
			err := netlink.RuleDel(rule)
			if errors.Is(err, unix.ENOENT) {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("delete rule fwmark %#x: %w", rule.Mark, err))
				break
			}
		}
	}
	for _, route := range r.routes {
		err := netlink.RouteDel(route)
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete local route %s table %d: %w",
				route.Dst, route.Table, err))
		}
	}
	return errors.Join(errs...)
}
