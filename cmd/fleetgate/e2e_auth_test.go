package main

// End-to-end tests of who may administer, revocation and key reload, with the real binary.

import (
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"
)

// cli runs the fleetgate binary with args and returns its stdout, failing on a non-zero exit.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fleetgate %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func adminGet(t *testing.T, p *proc, tok, path string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.url(path), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func signHS256(t *testing.T, secret, kid string, claims map[string]any) string {
	t.Helper()
	tk := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(claims))
	tk.Header["kid"] = kid
	s, err := tk.SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A second configured key that is not in auth.admin_keys cannot mint operator tokens that
// reach the admin API; the admin key can.
func TestAdminAPIOnlyForAdminKeys(t *testing.T) {
	dir := t.TempDir()
	devSecret, opsSecret := strings.Repeat("d", 32), strings.Repeat("o", 32)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", `
auth:
  keys:
    - {id: devices, alg: HS256, secret: "`+devSecret+`"}
    - {id: ops, alg: HS256, secret: "`+opsSecret+`"}
  admin_keys: [ops]
`)
	data := dir + "/data"
	p := startProc(t, data, cfg)
	claims := map[string]any{"sub": "mallory", "role": "operator", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}
	// `fleetgate token` signs with the first HMAC key, here the device key.
	minted := token(t, data, cfg, "--subject", "mallory", "--role", "operator")
	for name, tok := range map[string]string{"fleetgate token (device key)": minted, "device key": signHS256(t, devSecret, "devices", claims)} {
		if code := adminGet(t, p, tok, "/admin/v1/rules"); code != 403 {
			t.Fatalf("%s: operator token answered %d, want 403", name, code)
		}
	}
	if code := adminGet(t, p, signHS256(t, opsSecret, "ops", claims), "/admin/v1/rules"); code != 200 {
		t.Fatalf("admin key: %d\n%s", code, p.logs())
	}
}

// On embedded defaults `fleetgate token --role operator` reaches the admin API; `fleetgate
// revoke --subject` closes the device's MQTT connection within a second, its old token is
// refused on reconnect and over HTTP, and a token issued after the revocation works.
func TestRevokeSubjectEndToEnd(t *testing.T) {
	dir := t.TempDir()
	data := dir + "/data"
	p := startProc(t, data, "")
	op := token(t, data, "", "--subject", "ops", "--role", "operator")
	if code := adminGet(t, p, op, "/admin/v1/rules"); code != 200 {
		t.Fatalf("default operator token: %d", code)
	}
	old := token(t, data, "", "--subject", "dev-9", "--role", "device")
	var lost atomic.Bool
	connect := func(tok string) (mqtt.Client, error) {
		opts := mqtt.NewClientOptions().AddBroker("tcp://" + p.mqttAddr).SetClientID("dev-9").
			SetUsername("dev-9").SetPassword(tok).SetAutoReconnect(false).SetConnectRetry(false).
			SetProtocolVersion(4).SetConnectionLostHandler(func(mqtt.Client, error) { lost.Store(true) })
		c := mqtt.NewClient(opts)
		tk := c.Connect()
		if !tk.WaitTimeout(10 * time.Second) {
			t.Fatal("connect timed out")
		}
		return c, tk.Error()
	}
	c, err := connect(old)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, p.logs())
	}
	defer c.Disconnect(0)

	out := cli(t, "revoke", "--subject", "dev-9", "--server", "http://"+p.httpAddr, "--token", op)
	revoked := time.Now()
	if !strings.Contains(out, "revoked subject dev-9") || !strings.Contains(out, "1 connection(s) closed") {
		t.Fatalf("revoke said: %q", out)
	}
	waitFor(t, time.Second, "the revoked device's connection to close", lost.Load)
	if _, err := connect(old); err == nil {
		t.Fatal("reconnect with the revoked token succeeded")
	}
	if code, body, err := postEvents(http.DefaultClient, "http://"+p.httpAddr, old, "devices/dev-9/t", `1`); err != nil || code != 401 {
		t.Fatalf("HTTP with the revoked token: %d %v %v", code, body, err)
	}
	list := cli(t, "revocations", "list", "--server", "http://"+p.httpAddr, "--token", op)
	if !strings.Contains(list, "dev-9") {
		t.Fatalf("revocations list: %q", list)
	}
	// Tokens are refused up to and including the revocation's second (iat has whole seconds).
	waitFor(t, 3*time.Second, "the second after the revocation", func() bool { return time.Now().Unix() > revoked.Unix() })
	fresh := token(t, data, "", "--subject", "dev-9", "--role", "device")
	lost.Store(false)
	c2, err := connect(fresh)
	if err != nil {
		t.Fatalf("a token issued after the revocation: %v\n%s", err, p.logs())
	}
	defer c2.Disconnect(0)
	if code, body, err := postEvents(http.DefaultClient, "http://"+p.httpAddr, fresh, "devices/dev-9/t", `1`); err != nil || code != 202 {
		t.Fatalf("HTTP with a fresh token: %d %v %v", code, body, err)
	}
	cli(t, "revocations", "delete", "--subject", "dev-9", "--server", "http://"+p.httpAddr, "--token", op)
	if code, _, _ := postEvents(http.DefaultClient, "http://"+p.httpAddr, old, "devices/dev-9/t", `1`); code != 202 {
		t.Fatalf("old token after the revocation was deleted: %d", code)
	}
}

// SIGHUP reloads a rotated key file: tokens of the new key are accepted, those of the old one
// refused, and connections made before stay up.
func TestSIGHUPReloadsKeyFile(t *testing.T) {
	dir := t.TempDir()
	keyFile := writeTestFile(t, dir, "hs256.key", strings.Repeat("a", 32)+"\n")
	cfg := writeTestFile(t, dir, "fleetgate.yaml", `
auth:
  keys:
    - {id: main, alg: HS256, secret_file: `+keyFile+`}
  admin_keys: [main]
`)
	data := dir + "/data"
	p := startProc(t, data, cfg)
	base := "http://" + p.httpAddr
	oldApp := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	if code, _, _ := postEvents(http.DefaultClient, base, oldApp, "apps/x", `1`); code != 202 {
		t.Fatalf("old key before reload: %d", code)
	}
	dev := token(t, data, cfg, "--subject", "dev-1", "--role", "device")
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + p.mqttAddr).SetClientID("dev-1").
		SetUsername("dev-1").SetPassword(dev).SetAutoReconnect(false).SetConnectRetry(false)
	c := mqtt.NewClient(opts)
	if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("connect: %v", tk.Error())
	}
	defer c.Disconnect(0)

	writeTestFile(t, dir, "hs256.key", strings.Repeat("b", 32)+"\n")
	newApp := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	if code, _, _ := postEvents(http.DefaultClient, base, newApp, "apps/x", `1`); code != 401 {
		t.Fatalf("new key before reload: %d", code)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new key to be accepted after SIGHUP", func() bool {
		code, _, _ := postEvents(http.DefaultClient, base, newApp, "apps/x", `1`)
		return code == 202
	})
	if code, _, _ := postEvents(http.DefaultClient, base, oldApp, "apps/x", `1`); code != 401 {
		t.Fatalf("old key after reload: %d", code)
	}
	if !c.IsConnectionOpen() {
		t.Fatal("SIGHUP dropped an MQTT connection")
	}
	if tk := c.Publish("devices/dev-1/t", 1, false, `{"n":1}`); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("publish after SIGHUP: %v", tk.Error())
	}
	select {
	case <-p.exited:
		t.Fatalf("fleetgate exited on SIGHUP:\n%s", p.logs())
	default:
	}
}

// The revoke and revocations commands check their flags before calling the server.
func TestRevokeCommandFlags(t *testing.T) {
	f := func(want int, wantOut string, args ...string) {
		t.Helper()
		var out, errOut strings.Builder
		if code := run(args, &out, &errOut); code != want || !strings.Contains(errOut.String(), wantOut) {
			t.Fatalf("fleetgate %v = %d\n%s", args, code, errOut.String())
		}
	}
	t.Setenv("FLEETGATE_TOKEN", "")
	f(2, "give --subject", "revoke")
	f(2, "not both", "revoke", "--subject", "a", "--jti", "b")
	f(2, "no operator token", "revoke", "--subject", "a")
	f(2, "usage:", "revocations")
	f(2, "unknown subcommand", "revocations", "purge")
	f(2, "give --subject", "revocations", "delete")
	f(2, "-o must be text or json", "revocations", "list", "-o", "yaml")
}
