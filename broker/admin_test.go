package broker

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/internal/httpx"
)

func adminRequest(t *testing.T, e *env, token, method, body string) (int, map[string]any) {
	t.Helper()
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(method)
	ctx.Request.SetRequestURI("/admin/v1/publish")
	ctx.Request.SetBodyString(body)
	if token != "" {
		p, err := e.verifier.Verify(token)
		if err != nil {
			t.Fatal(err)
		}
		ctx.SetUserValue(httpx.PrincipalKey, p)
	}
	e.broker.AdminHandler()(&ctx)
	var out map[string]any
	if err := json.Unmarshal(ctx.Response.Body(), &out); err != nil {
		t.Fatalf("response %q: %v", ctx.Response.Body(), err)
	}
	return ctx.Response.StatusCode(), out
}

func TestAdminPublish(t *testing.T) {
	e := newEnv(t, "", nil)
	rc := dialRaw(t, e.addr, 4)
	rc.connect("d1", e.token("d1", "device", time.Hour), true, nil)
	rc.send(subscribePacket("devices/d1/#", 1))
	if pk, err := rc.read(); err != nil || pk.ReasonCodes[0] != 1 {
		t.Fatalf("SUBACK %+v %v", pk, err)
	}
	op := e.token("alice", "operator", time.Hour)
	dev := e.token("d1", "device", time.Hour)

	cases := []struct {
		name, token, method, body string
		status                    int
		code                      string
		payload                   string // what d1 receives, when status is 200
	}{
		{"json object", op, "POST", `{"topic":"devices/d1/cmd","payload":{"reboot": true},"qos":1}`, 200, "", `{"reboot":true}`},
		{"string payload", op, "POST", `{"topic":"devices/d1/cmd","payload":"hello"}`, 200, "", "hello"},
		{"base64 payload", op, "POST", `{"topic":"devices/d1/cmd","payload_base64":"AAEC"}`, 200, "", "\x00\x01\x02"},
		{"no token", "", "POST", `{"topic":"devices/d1/cmd"}`, 401, "unauthorized", ""},
		{"device token", dev, "POST", `{"topic":"devices/d1/cmd"}`, 403, "forbidden", ""},
		{"GET", op, "GET", ``, 405, "method_not_allowed", ""},
		{"bad json", op, "POST", `{"topic":`, 400, "bad_request", ""},
		{"unknown field", op, "POST", `{"topic":"devices/d1/cmd","qs":1}`, 400, "bad_request", ""},
		{"no topic", op, "POST", `{"payload":1}`, 400, "bad_request", ""},
		{"wildcard topic", op, "POST", `{"topic":"devices/+/cmd"}`, 400, "bad_topic", ""},
		{"bad qos", op, "POST", `{"topic":"devices/d1/cmd","qos":3}`, 400, "bad_request", ""},
		{"both payloads", op, "POST", `{"topic":"devices/d1/cmd","payload":1,"payload_base64":"AA=="}`, 400, "bad_request", ""},
		{"bad base64", op, "POST", `{"topic":"devices/d1/cmd","payload_base64":"!!"}`, 400, "bad_request", ""},
		{"too large", op, "POST", `{"topic":"devices/d1/cmd","payload":"` + strings.Repeat("x", 300000) + `"}`, 413, "too_large", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, out := adminRequest(t, e, tc.token, tc.method, tc.body)
			if status != tc.status {
				t.Fatalf("status %d (%v), want %d", status, out, tc.status)
			}
			if tc.status != 200 {
				if out["code"] != tc.code || out["error"] == "" {
					t.Fatalf("error body %v, want code %q", out, tc.code)
				}
				return
			}
			pk, err := rc.read()
			if err != nil {
				t.Fatal(err)
			}
			if string(pk.Payload) != tc.payload || pk.TopicName != "devices/d1/cmd" {
				t.Fatalf("d1 received %q on %q, want %q", pk.Payload, pk.TopicName, tc.payload)
			}
			if pk.FixedHeader.Qos > 0 {
				rc.send(pubackPacket(pk.PacketID))
			}
		})
	}
}
