package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// runFleetgate runs the binary and returns its exit code and combined output.
func runFleetgate(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command(binPath, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("fleetgate %v: %v", args, err)
	return 0, ""
}

// TestStorageCheckRepairCLI: on a data dir whose log has a truncated table, `serve` refuses to
// start with an ERROR naming the table and the commands, `storage check` reports it and exits
// 1, `storage repair --yes` moves it aside and says what it held, and then check passes and
// serve starts.
func TestStorageCheckRepairCLI(t *testing.T) {
	data := t.TempDir()
	logDir := filepath.Join(data, "log")
	// Three tables: each Close flushes the memtable into one.
	for round := range 3 {
		s, err := storage.Open(storage.Options{Dir: logDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		var entries []*storage.Entry
		for i := range 100 {
			ev := &event.Event{ID: "ev-" + strconv.Itoa(round) + "-" + strconv.Itoa(i), Topic: "devices/d1/telemetry", Subject: "d1",
				Protocol: "http", Data: []byte(`{"temp":` + strconv.Itoa(i) + `}`), Time: time.Now()}
			entries = append(entries, &storage.Entry{Event: ev, Targets: []storage.Target{{Function: "archive", Rule: "r1"}}})
		}
		if err := s.Append(context.Background(), entries); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	tables, _ := filepath.Glob(filepath.Join(logDir, "*.sst"))
	if len(tables) != 3 {
		t.Fatalf("tables: %v", tables)
	}
	broken := filepath.Base(tables[1])
	info, err := os.Stat(tables[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(tables[1], info.Size()/2); err != nil {
		t.Fatal(err)
	}

	code, out := runFleetgate(t, "serve", "--data-dir", data, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	if code == 0 || !strings.Contains(out, "level=ERROR") || !strings.Contains(out, broken+" is truncated") ||
		!strings.Contains(out, "fleetgate storage repair") || strings.Contains(out, "panic") {
		t.Fatalf("serve on a damaged dir: exit %d\n%s", code, out)
	}

	code, out = runFleetgate(t, "storage", "check", "--data-dir", data)
	if code != 1 || !strings.Contains(out, "DAMAGED: table "+broken+" is truncated") {
		t.Fatalf("storage check: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(tables[1]); err != nil {
		t.Fatalf("check changed the dir: %v", err)
	}

	code, out = runFleetgate(t, "storage", "repair", "--data-dir", data, "--yes")
	if code != 0 || !strings.Contains(out, "move "+broken+" aside") || !strings.Contains(out, "moved into ") ||
		!strings.Contains(out, "holds 200 events, 200 queue entries, 0 dead letters") {
		t.Fatalf("storage repair: exit %d\n%s", code, out)
	}
	aside, _ := filepath.Glob(filepath.Join(logDir, "damaged-*", broken))
	if len(aside) != 1 {
		t.Fatalf("%s not moved aside:\n%s", broken, out)
	}
	t.Logf("repair:\n%s", out)

	code, out = runFleetgate(t, "storage", "check", "--data-dir", data)
	if code != 0 || !strings.Contains(out, "ok: no damage found") {
		t.Fatalf("storage check after repair: exit %d\n%s", code, out)
	}
	startProc(t, data, "").kill()
}
