package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat. Linux
// fixes it at 100 on every architecture Go supports.
const clockTicks = 100

// procUsage is what a process tree uses at one moment.
type procUsage struct {
	// CPUSeconds is user+system time of every process in the tree, plus
	// that of children they have reaped.
	CPUSeconds float64 `json:"cpu_s"`
	RSSKiB     int64   `json:"rss_kib"`
	FDs        int64   `json:"fds"`
	Procs      int     `json:"procs"`
	// Goroutines is go_goroutines from the gateway's metrics, when asked.
	Goroutines *float64 `json:"goroutines,omitempty"`
	// LiveKiB is the Go heap and goroutine stacks in use right after a
	// collection the gateway was asked to run (--gc-url), from its
	// metrics: memory still referenced, without the garbage and freed
	// pages RSS may still hold.
	LiveKiB *float64 `json:"live_kib,omitempty"`
}

// procStat is the part of /proc/PID/stat that treeUsage needs.
type procStat struct {
	ppid  int
	ticks int64 // utime + stime + cutime + cstime
}

// parseStat parses the contents of /proc/PID/stat. The command name is in
// parentheses and may itself contain spaces or parentheses, so the fields
// are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return procStat{}, fmt.Errorf("stat line without a command name: %.40q", b)
	}
	// After ") " come state (field 3), ppid (4), ... utime (14), stime (15),
	// cutime (16), cstime (17).
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("stat line has %d fields after the name, want 15 or more",
			len(f))
	}
	var st procStat
	var err error
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, fmt.Errorf("stat ppid %q: %w", f[1], err)
	}
	for _, s := range f[11:15] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("stat cpu time %q: %w", s, err)
		}
		st.ticks += v
	}
	return st, nil
}

// treeUsage sums CPU time, resident memory and open descriptors over pid
// and all its descendants. Processes that exit while it reads are skipped.
func treeUsage(pid int) (procUsage, error) {
	pids, stats, err := tree(pid)
	if err != nil {
		return procUsage{}, err
	}
	var u procUsage
	for _, p := range pids {
		u.CPUSeconds += float64(stats[p].ticks) / clockTicks
		u.RSSKiB += rssKiB(p)
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p)); err == nil {
			u.FDs += int64(len(fds))
		}
		u.Procs++
	}
	return u, nil
}

// tree returns pid and its descendants with their stat, pid first.
func tree(pid int) ([]int, map[int]procStat, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, nil, err
	}
	stats := map[int]procStat{}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue // gone meanwhile
		}
		st, err := parseStat(b)
		if err != nil {
			return nil, nil, fmt.Errorf("/proc/%d/stat: %w", p, err)
		}
		stats[p] = st
		children[st.ppid] = append(children[st.ppid], p)
	}
	if _, ok := stats[pid]; !ok {
		return nil, nil, fmt.Errorf("gateway process %d not found", pid)
	}

	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out, stats, nil
}

// rssKiB reads VmRSS from /proc/PID/status, 0 if it is gone.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// gwCPU reads the gateway tree's CPU seconds, or returns nil without a pid.
func gwCPU(pid int) (*float64, error) {
	if pid == 0 {
		return nil, nil
	}
	u, err := treeUsage(pid)
	if err != nil {
		return nil, err
	}
	return &u.CPUSeconds, nil
}

// cpuSince is the CPU time used since before, or nil if there is no
// gateway process.
func cpuSince(pid int, before *float64) (*float64, error) {
	if before == nil {
		return nil, nil
	}
	now, err := gwCPU(pid)
	if err != nil {
		return nil, err
	}
	d := *now - *before
	return &d, nil
}
