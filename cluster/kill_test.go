package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/storage"
)

// childEnv carries a node's config to a child process of the test binary (a node that the test
// can SIGKILL: no shutdown event, no goodbye on the routes).
const childEnv = "FLEETGATE_CLUSTER_TEST_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		runChild(spec)
		return
	}
	os.Exit(m.Run())
}

type childSpec struct {
	Cfg     Config
	DataDir string
}

func runChild(spec string) {
	var cs childSpec
	if err := json.Unmarshal([]byte(spec), &cs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	n, err := Start(ctx, cs.Cfg, Options{DataDir: cs.DataDir, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("started", n.Name())
	select {} // until killed
}

func startChild(t *testing.T, tn *testNode) *exec.Cmd {
	t.Helper()
	spec, _ := json.Marshal(childSpec{Cfg: tn.cfg, DataDir: tn.dir})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	cmd.Stderr = tn.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

func TestSIGKILLedNodes(t *testing.T) {
	t.Parallel()
	tns := threeNodes(t)
	for _, tn := range tns {
		if err := os.MkdirAll(filepath.Dir(tn.dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// gw-2 and gw-3 in child processes, gw-1 here.
	kids := []*exec.Cmd{startChild(t, tns[1]), startChild(t, tns[2])}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Start(ctx, tns[0].cfg, tns[0].opts())
	if err != nil {
		t.Fatalf("%v\ngw-2: %s\ngw-3: %s", err, tns[1].logs, tns[2].logs)
	}
	defer n.Close()
	waitFor(t, 10*time.Second, "quorum and both routes", func() error {
		if err := n.Quorum(); err != nil {
			return err
		}
		if v := gaugeValue(tns[0].set, "fleetgate_cluster_routes_connected"); v != "2" {
			return fmt.Errorf("routes %s", v)
		}
		return nil
	})

	// One node killed: its route drops, the quorum stays (2 of 3).
	kill := func(c *exec.Cmd) {
		if err := c.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		c.Wait()
	}
	kill(kids[1])
	waitFor(t, 10*time.Second, "gw-3's route gone", func() error {
		if v := gaugeValue(tns[0].set, "fleetgate_cluster_routes_connected"); v != "1" {
			return fmt.Errorf("routes %s", v)
		}
		return nil
	})
	// The status that counts one route is the one Quorum reports (or a later one).
	if err := n.Quorum(); err != nil {
		t.Fatalf("one of three killed: %v", err)
	}

	// The second one killed: no quorum, at once (the route drops; Raft would take seconds).
	kill(kids[0])
	start := time.Now()
	waitFor(t, 5*time.Second, "quorum lost", func() error {
		if err := n.Quorum(); !errors.Is(err, storage.ErrNoQuorum) {
			return fmt.Errorf("Quorum: %v", err)
		}
		return nil
	})
	t.Logf("quorum lost %s after the second SIGKILL: %v", time.Since(start).Round(time.Millisecond), n.Quorum())
	if !strings.Contains(tns[0].logs.String(), "quorum lost") {
		t.Fatalf("no 'quorum lost' in the log:\n%s", tns[0].logs)
	}
}
