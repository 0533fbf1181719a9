package bpf

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The legacy filter is found again by name and priority, so that a filter
// left behind by a killed process can be removed at the next start: unlike a
// TCX link, a cls_bpf filter outlives the process that installed it.
const (
	filterName     = "snigate_steer"
	filterPriority = 0x5e1
	filterHandle   = 1
)

type legacyAttachment struct {
	iface        *net.Interface
	filter       *netlink.BpfFilter
	createdQdisc *netlink.GenericQdisc
}

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
}

func hasClsact(ifindex int) (bool, error) {
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false, fmt.Errorf("find link %d: %w", ifindex, err)
	}
	qdiscs, err := netlink.QdiscList(link)
	if err != nil {
		return false, fmt.Errorf("list qdiscs of %s: %w", link.Attrs().Name, err)
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			return true, nil
		}
	}
	return false, nil
}

// attachLegacy installs the filter. staleRemoved says that a filter of a
// killed earlier run was just removed: if the clsact qdisc is then empty, that
// run created it, and this attachment takes it over so that a clean stop
// removes it.
func attachLegacy(iface *net.Interface, prog *ebpf.Program, staleRemoved bool) (*legacyAttachment, error) {
	a := &legacyAttachment{iface: iface}
	present, err := hasClsact(iface.Index)
	if err != nil {
		return nil, err
	}
	if present && staleRemoved {
		empty, err := clsactEmpty(iface)
		if err != nil {
			return nil, err
		}
		if empty {
			a.createdQdisc = clsact(iface.Index)
		}
	}
	if !present {
		q := clsact(iface.Index)
		if err := netlink.QdiscAdd(q); err != nil {
			return nil, fmt.Errorf("add clsact qdisc to %s: %w", iface.Name, err)
		}
		a.createdQdisc = q
	}

	a.filter = &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: iface.Index,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    filterHandle,
			Priority:  filterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         filterName,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(a.filter); err != nil {
		a.Close()
		return nil, fmt.Errorf("add cls_bpf filter to %s ingress: %w", iface.Name, err)
	}
	return a, nil
}

func (a *legacyAttachment) Mode() Mode        { return ModeLegacy }
func (a *legacyAttachment) Interface() string { return a.iface.Name }

// Close removes the filter, and the clsact qdisc if this attachment created
// it; a qdisc that was there before may carry other programs.
func (a *legacyAttachment) Close() error {
	var errs []error
	if a.filter != nil {
		if err := netlink.FilterDel(a.filter); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete filter: %w", err))
		}
		a.filter = nil
	}
	if a.createdQdisc != nil {
		if err := netlink.QdiscDel(a.createdQdisc); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete clsact qdisc: %w", err))
		}
		a.createdQdisc = nil
	}
	return errors.Join(errs...)
}

func listFilters(iface *net.Interface, parent uint32) ([]netlink.Filter, error) {
	link, err := netlink.LinkByIndex(iface.Index)
	if err != nil {
		return nil, fmt.Errorf("find link %d: %w", iface.Index, err)
	}
	filters, err := netlink.FilterList(link, parent)
	if err != nil {
		return nil, fmt.Errorf("list filters of %s parent %#x: %w", iface.Name, parent, err)
	}
	return filters, nil
}

func clsactEmpty(iface *net.Interface) (bool, error) {
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := listFilters(iface, parent)
		if err != nil || len(filters) > 0 {
			return false, err
		}
	}
	return true, nil
}

// removeEmptyClsact deletes iface's clsact qdisc if no filter is left on it.
func removeEmptyClsact(iface *net.Interface) error {
	present, err := hasClsact(iface.Index)
	if err != nil || !present {
		return err
	}
	empty, err := clsactEmpty(iface)
	if err != nil || !empty {
		return err
	}
	if err := netlink.QdiscDel(clsact(iface.Index)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete clsact qdisc of %s: %w", iface.Name, err)
	}
	return nil
}

// removeStaleFilters deletes snigate's cls_bpf filters from iface's ingress
// and reports whether there were any.
func removeStaleFilters(iface *net.Interface) (bool, error) {
	present, err := hasClsact(iface.Index)
	if err != nil || !present {
		return false, err
	}
	filters, err := listFilters(iface, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return false, err
	}
	removed := false
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || bf.Name != filterName {
			continue
		}
		if err := netlink.FilterDel(bf); err != nil {
			return removed, fmt.Errorf("delete stale filter on %s: %w", iface.Name, err)
		}
		removed = true
	}
	return removed, nil
}
