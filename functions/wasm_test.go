package functions

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

var (
	thresholdOnce sync.Once
	thresholdPath string
	thresholdErr  error
	thresholdDir  string
)

// thresholdModule builds examples/functions/threshold for wasip1 once per test binary run.
// Its compilation cache (sharedDataDir()/wasm-cache) is shared by the tests, so wazero
// compiles it once per run.
func thresholdModule(t testing.TB) string {
	t.Helper()
	if raceEnabled {
		t.Skip("compiling a Go-built wasm module under -race takes too long; run without -race")
	}
	thresholdOnce.Do(func() {
		thresholdDir, thresholdErr = os.MkdirTemp("", "fleetgate-wasm-")
		if thresholdErr != nil {
			return
		}
		thresholdPath = filepath.Join(thresholdDir, "threshold.wasm")
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", thresholdPath, "../examples/functions/threshold")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		out, err := cmd.CombinedOutput()
		if err != nil {
			thresholdErr = errors.New(string(out))
		}
	})
	if thresholdErr != nil {
		t.Fatalf("building the threshold example: %v", thresholdErr)
	}
	return thresholdPath
}

func sharedDataDir() string { return thresholdDir }

func TestMain(m *testing.M) {
	code := m.Run()
	if thresholdDir != "" {
		os.RemoveAll(thresholdDir)
	}
	os.Exit(code)
}

// Hand-assembled WASI-less command modules: memory + _start doing `unreachable` or `loop br 0`.
var (
	trapModule = []byte{0, 'a', 's', 'm', 1, 0, 0, 0,
		1, 4, 1, 0x60, 0, 0, // type () -> ()
		3, 2, 1, 0, // one function of type 0
		5, 3, 1, 0, 1, // one memory, min 1 page
		7, 19, 2, 6, 'm', 'e', 'm', 'o', 'r', 'y', 2, 0, 6, '_', 's', 't', 'a', 'r', 't', 0, 0,
		10, 5, 1, 3, 0, 0x00, 0x0b} // unreachable
	loopModule = []byte{0, 'a', 's', 'm', 1, 0, 0, 0,
		1, 4, 1, 0x60, 0, 0,
		3, 2, 1, 0,
		5, 3, 1, 0, 1,
		7, 19, 2, 6, 'm', 'e', 'm', 'o', 'r', 'y', 2, 0, 6, '_', 's', 't', 'a', 'r', 't', 0, 0,
		10, 9, 1, 7, 0, 0x03, 0x40, 0x0c, 0, 0x0b, 0x0b} // loop br 0 end
)

func writeModule(t *testing.T, b []byte) string {
	p := filepath.Join(t.TempDir(), "m.wasm")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func thresholdItems(n int, temp func(i int) int) []storage.Item {
	items := make([]storage.Item, n)
	for i := range items {
		data := []byte(`{"temp":` + itoa(temp(i)) + `,"unit":"C"}`)
		items[i] = storage.Item{Seq: uint64(i + 1), Function: "threshold", Rule: "hot", Data: data, Event: &event.Event{
			ID: event.NewID(), Source: "mqtt://dev", Type: "fleetgate.mqtt.publish", Subject: "dev" + itoa(i),
			Time: time.Now(), ContentType: "application/json", Data: data, Topic: "devices/dev" + itoa(i) + "/telemetry",
		}}
	}
	return items
}

func itoa(i int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + jsonNum(i)) }

func jsonNum(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestThresholdExampleThroughDispatcher(t *testing.T) {
	mod := thresholdModule(t)
	st := openStore(t, t.TempDir())
	defer st.Close()
	pub := &capturePublisher{}
	dataDir := sharedDataDir()
	startDispatcher(t, Options{Store: st, Publisher: pub, DataDir: dataDir, Definitions: []Definition{{
		Name: "threshold", Type: TypeWASM, Module: mod, Env: map[string]string{"THRESHOLD": "50"},
		Batch: BatchPolicy{MaxWait: time.Millisecond},
	}}})
	mk := func(sub string, temp int) *storage.Entry {
		return &storage.Entry{Event: &event.Event{ID: event.NewID(), Subject: sub, Time: time.Now(),
			ContentType: "application/json", Data: []byte(`{"temp":` + jsonNum(temp) + `,"id":"` + sub + `"}`),
			Topic: "devices/" + sub + "/telemetry"}, Targets: []storage.Target{{Function: "threshold", Rule: "t"}}}
	}
	if err := st.Append(context.Background(), []*storage.Entry{mk("d1", 20), mk("d2", 75), mk("d3", 50)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "queue drained", func() bool { return st.QueueDepth("threshold") == 0 })
	msgs := pub.all()
	if len(msgs) != 1 || msgs[0].Topic != "devices/d2/alerts" || msgs[0].QoS != 1 {
		t.Fatalf("published %+v, want one alert to devices/d2/alerts", msgs)
	}
	var got map[string]any
	if err := json.Unmarshal(msgs[0].Payload, &got); err != nil {
		t.Fatal(err)
	}
	if got["alert"] != "overheat" || got["temp"] != 75.0 || got["id"] != "d2" {
		t.Fatalf("alert payload = %v", got)
	}
	if entries, _ := os.ReadDir(filepath.Join(dataDir, "wasm-cache")); len(entries) == 0 {
		t.Fatal("no compilation cache written under DataDir/wasm-cache")
	}
}

func TestWASMTrapAndRunawayFailOnlyTheirBatch(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	alive := newFnServer(t, nil)
	retry := RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
	startDispatcher(t, Options{Store: st, Definitions: []Definition{
		{Name: "trap", Type: TypeWASM, Module: writeModule(t, trapModule), Retry: retry},
		{Name: "spin", Type: TypeWASM, Module: writeModule(t, loopModule), Retry: retry, Timeout: 50 * time.Millisecond},
		httpDef("alive", alive.URL),
	}})
	appendEvents(t, st, "trap", 0, 2, 2)
	appendEvents(t, st, "spin", 0, 1, 1)
	ids := appendEvents(t, st, "alive", 0, 5, 5)
	waitFor(t, 5*time.Second, "alive delivered", func() bool { return alive.delivered(ids) })
	waitFor(t, 10*time.Second, "trap dead-lettered", func() bool { return st.DeadLetterDepth("trap") == 2 })
	waitFor(t, 10*time.Second, "spin dead-lettered", func() bool { return st.DeadLetterDepth("spin") == 1 })
	l, _ := st.DeadLetters("trap", 0, 1)
	if !strings.Contains(l[0].Reason, "trapped") && !strings.Contains(l[0].Reason, "unreachable") {
		t.Errorf("trap reason = %q", l[0].Reason)
	}
	l, _ = st.DeadLetters("spin", 0, 1)
	if !strings.Contains(l[0].Reason, "timeout") && !strings.Contains(l[0].Reason, "deadline") {
		t.Errorf("spin reason = %q", l[0].Reason)
	}
}

func TestWASMInvokerDirect(t *testing.T) {
	mod := thresholdModule(t)
	def := Definition{Name: "threshold", Type: TypeWASM, Module: mod, Env: map[string]string{"THRESHOLD": "x"}}.WithDefaults()
	inv, err := newWASMInvoker(def, Env{Logger: quietLogger(), DataDir: sharedDataDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.(*wasmInvoker).Close()
	_, err = inv.Invoke(context.Background(), &Batch{Function: "threshold", Items: thresholdItems(2, func(int) int { return 90 })})
	if err == nil || !strings.Contains(err.Error(), "exited with status 1") || !strings.Contains(err.Error(), "THRESHOLD") {
		t.Fatalf("err = %v, want exit status 1 with the module's stderr", err)
	}
	// The same invoker keeps working (fresh instances per batch).
	def.Env = map[string]string{"THRESHOLD": "10"}
	inv2, err := newWASMInvoker(def, Env{Logger: quietLogger(), DataDir: sharedDataDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer inv2.(*wasmInvoker).Close()
	for round := 0; round < 3; round++ {
		res, err := inv2.Invoke(context.Background(), &Batch{Function: "threshold", Items: thresholdItems(4, func(i int) int { return i * 10 })})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Publish) != 2 || res.Publish[0].Topic != "devices/dev2/alerts" {
			t.Fatalf("round %d: publish = %+v", round, res.Publish)
		}
	}
}
