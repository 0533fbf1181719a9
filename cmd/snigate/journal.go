package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap/zapcore"
)

// journalCore writes zap entries as native journal entries: the priority
// follows the level, and every field becomes an indexed journal field
// (SNIGATE_CLIENT, SNIGATE_SNI, ...), so "journalctl SNIGATE_ACTION=bump"
// works. Plain text on stderr would land at one priority, unindexed.
type journalCore struct {
	zapcore.LevelEnabler
	fields []zapcore.Field
	send   func(message string, priority journal.Priority, vars map[string]string) error
}

func newJournalCore(level zapcore.LevelEnabler) *journalCore {
	return &journalCore{LevelEnabler: level, send: journal.Send}
}

func (c *journalCore) With(fields []zapcore.Field) zapcore.Core {
	clone := *c
	clone.fields = append(append([]zapcore.Field(nil), c.fields...), fields...)
	return &clone
}

func (c *journalCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *journalCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	msg, prio, vars := journalEntry(e, append(append([]zapcore.Field(nil), c.fields...), fields...))
	return c.send(msg, prio, vars)
}

func (c *journalCore) Sync() error { return nil }

// journalPriority maps zap levels to syslog priorities.
func journalPriority(l zapcore.Level) journal.Priority {
	switch {
	case l <= zapcore.DebugLevel:
		return journal.PriDebug
	case l == zapcore.InfoLevel:
		return journal.PriInfo
	case l == zapcore.WarnLevel:
		return journal.PriWarning
	case l == zapcore.ErrorLevel:
		return journal.PriErr
	}
	return journal.PriCrit
}

// journalEntry builds the message, priority and fields of one entry. The
// message repeats the fields as key=value so that plain "journalctl" output
// is readable without -o verbose.
func journalEntry(e zapcore.Entry, fields []zapcore.Field) (string, journal.Priority,
	map[string]string) {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	vars := make(map[string]string, len(keys)+1)
	var msg strings.Builder
	if e.LoggerName != "" {
		msg.WriteString(e.LoggerName + ": ")
		vars["SNIGATE_LOGGER"] = e.LoggerName
	}
	msg.WriteString(e.Message)
	for _, k := range keys {
		v := fmt.Sprint(enc.Fields[k])
		vars[journalField(k)] = v
		fmt.Fprintf(&msg, " %s=%s", k, v)
	}
	return msg.String(), journalPriority(e.Level), vars
}

// journalField turns a zap key into a journal field name: upper case,
// [A-Z0-9_] only, behind a prefix that keeps it apart from systemd's own.
func journalField(key string) string {
	var b strings.Builder
	b.WriteString("SNIGATE_")
	for _, r := range strings.ToUpper(key) {
		if r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}
