package rules

import (
	"errors"
	"fmt"
	"testing"
)

func TestEngineRollback(t *testing.T) {
	kv := newMemKV()
	e, err := NewEngine(EngineOptions{KV: kv, Seed: []Rule{{ID: "v1", Topic: "#", Functions: []string{"f"}}},
		Compile: CompileOptions{KnownFunction: known("f", "g")}})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := e.Apply([]Rule{{ID: "v2", Topic: "a/#", Functions: []string{"g"}}}); err != nil || v != 2 {
		t.Fatalf("Apply = %d, %v", v, err)
	}
	v, err := e.Rollback(1)
	if err != nil || v != 3 {
		t.Fatalf("Rollback(1) = %d, %v; want version 3", v, err)
	}
	set, live := e.Live()
	if live != 3 || set.Rules()[0].ID != "v1" {
		t.Fatalf("after rollback: live %d rules %+v", live, set.Rules())
	}
	h, err := e.History()
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(h[0].Version, h[0].RollbackOf, h[0].Live, h[0].RuleCount, " ", h[1].Version, h[1].Live, " ", h[2].Version)
	if len(h) != 3 || got != "3 1 true 1 2 false 1" {
		t.Fatalf("history %+v (%s)", h, got)
	}
	sv, err := e.Version(2)
	if err != nil || sv.Version != 2 || sv.Live || len(sv.Rules) != 1 || sv.Rules[0].ID != "v2" {
		t.Fatalf("Version(2) = %+v, %v", sv, err)
	}

	// A version that is not kept, or whose rules no longer validate, changes nothing.
	if _, err := e.Rollback(9); !errors.Is(err, ErrNoVersion) {
		t.Fatalf("Rollback(9) = %v, want ErrNoVersion", err)
	}
	e2, err := NewEngine(EngineOptions{KV: kv, Compile: CompileOptions{KnownFunction: known("f")}})
	if err != nil {
		t.Fatal(err)
	}
	var ve *ValidationError
	if _, err := e2.Rollback(2); !errors.As(err, &ve) || ve.Problems[0].Rule != "v2" {
		t.Fatalf("Rollback to a set naming a removed function = %v, want a validation error at rule v2", err)
	}
	if _, live := e2.Live(); live != 3 {
		t.Fatalf("live version %d after a refused rollback, want 3", live)
	}
}

func TestAdminVersions(t *testing.T) {
	e, _ := newTestEngine(t, Rule{ID: "one", Topic: "#", Functions: []string{"log"}})
	base := serveAdmin(t, e) + AdminPrefix
	if code := call(t, "PUT", base, "application/yaml", "rules:\n  - {id: two, topic: x, functions: [log]}\n", nil); code != 200 {
		t.Fatalf("apply: %d", code)
	}
	var vs VersionsResponse
	if code := call(t, "GET", base+"/versions", "", "", &vs); code != 200 || vs.Live != 2 || len(vs.Versions) != 2 || vs.Versions[0].Version != 2 || !vs.Versions[0].Live {
		t.Fatalf("versions: %d %+v", code, vs)
	}
	var sv StoredVersion
	if code := call(t, "GET", base+"/versions/1", "", "", &sv); code != 200 || sv.Rules[0].ID != "one" {
		t.Fatalf("version 1: %d %+v", code, sv)
	}
	var rb RollbackResponse
	if code := call(t, "POST", base+"/versions/1/rollback", "", "", &rb); code != 200 || rb.Version != 3 || rb.RollbackOf != 1 {
		t.Fatalf("rollback: %d %+v", code, rb)
	}
	var list ListResponse
	if call(t, "GET", base, "", "", &list); list.Version != 3 || list.Rules[0].ID != "one" {
		t.Fatalf("live after rollback: %+v", list)
	}
	f := func(method, path string, want int) {
		t.Helper()
		if code := call(t, method, base+path, "", "", nil); code != want {
			t.Errorf("%s %s = %d, want %d", method, path, code, want)
		}
	}
	f("GET", "/versions/7", 404)
	f("POST", "/versions/7/rollback", 404)
	f("GET", "/versions/x", 404)
	f("GET", "/versions/1/rollback", 405)
	f("DELETE", "/versions", 405)
	f("GET", "/versions/1/other", 404)
}

func TestAdminValidate(t *testing.T) {
	e, _ := newTestEngine(t, Rule{ID: "one", Topic: "#", Functions: []string{"log"}})
	base := serveAdmin(t, e) + AdminPrefix
	var ok ValidateResponse
	if code := call(t, "POST", base+"/validate", "application/yaml", "rules:\n  - {id: two, topic: x, functions: [log]}\n", &ok); code != 200 || !ok.Valid || ok.Rules[0].ID != "two" {
		t.Fatalf("validate good: %d %+v", code, ok)
	}
	var bad InvalidResponse
	body := "rules:\n  - {id: a, topic: x, functions: [log]}\n  - {id: b, topic: 'a/#/b', when: 'payload.x +', functions: [log]}\n"
	if code := call(t, "POST", base+"/validate", "application/yaml", body, &bad); code != 422 || len(bad.Problems) != 2 || bad.Problems[0].Rule != "b" || bad.Problems[0].Index != 1 {
		t.Fatalf("validate bad: %d %+v", code, bad)
	}
	if _, v := e.Live(); v != 1 {
		t.Fatalf("validate changed the live version to %d", v)
	}
}
