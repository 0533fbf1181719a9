package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

type sentEntry struct {
	msg  string
	prio journal.Priority
	vars map[string]string
}

func TestJournalCore(t *testing.T) {
	var sent []sentEntry
	core := newJournalCore(zapcore.DebugLevel)
	core.send = func(m string, p journal.Priority, v map[string]string) error {
		sent = append(sent, sentEntry{m, p, v})
		return nil
	}
	log := zap.New(core).Named("dataplane").With(zap.String("client", "198.18.1.2:5000"))
	log.Info("connection", zap.String("sni", "www.example.test"),
		zap.Duration("duration", 1500*time.Millisecond), zap.Int64("bytes_up", 42))
	log.Warn("drain", zap.Error(errors.New("closed 3 connections")))
	log.Debug("detail")

	if len(sent) != 3 {
		t.Fatalf("%d entries sent, want 3", len(sent))
	}
	first := sent[0]
	if first.prio != journal.PriInfo {
		t.Errorf("info entry has priority %d, want %d", first.prio, journal.PriInfo)
	}
	for k, want := range map[string]string{
		"SNIGATE_CLIENT": "198.18.1.2:5000", "SNIGATE_SNI": "www.example.test",
		"SNIGATE_BYTES_UP": "42", "SNIGATE_LOGGER": "dataplane",
	} {
		if got := first.vars[k]; got != want {
			t.Errorf("field %s = %q, want %q", k, got, want)
		}
	}
	if !strings.HasPrefix(first.msg, "dataplane: connection ") ||
		!strings.Contains(first.msg, "sni=www.example.test") {
		t.Errorf("message %q lacks the logger, text or fields", first.msg)
	}
	if sent[1].prio != journal.PriWarning || sent[1].vars["SNIGATE_ERROR"] != "closed 3 connections" {
		t.Errorf("warn entry = %+v", sent[1])
	}
	if sent[2].prio != journal.PriDebug {
		t.Errorf("debug entry priority %d", sent[2].prio)
	}
}

func TestJournalFieldNames(t *testing.T) {
	for in, want := range map[string]string{
		"bytes_up": "SNIGATE_BYTES_UP", "dst": "SNIGATE_DST", "a.b-c": "SNIGATE_A_B_C",
	} {
		if got := journalField(in); got != want {
			t.Errorf("journalField(%q) = %q, want %q", in, got, want)
		}
	}
	if p := journalPriority(zapcore.FatalLevel); p != journal.PriCrit {
		t.Errorf("fatal maps to %d, want %d", p, journal.PriCrit)
	}
	if p := journalPriority(zapcore.ErrorLevel); p != journal.PriErr {
		t.Errorf("error maps to %d, want %d", p, journal.PriErr)
	}
}
