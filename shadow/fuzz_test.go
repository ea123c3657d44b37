package shadow

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzShadowUpdate feeds update bodies to the parser and merger: a body is either refused
// with ErrInvalid, or applied to a document; the result always encodes, decodes to the same
// document, has a delta that is exactly the difference of desired and reported, and applying
// the same update again changes nothing but the version (merge patches are idempotent).
func FuzzShadowUpdate(f *testing.F) {
	for _, s := range []string{
		`{"state":{"reported":{"temp":21.5,"fan":1}}}`,
		`{"state":{"desired":{"fan":3}},"version":1}`,
		`{"state":{"desired":{"led":{"r":1,"g":null}},"reported":{"led":{"r":1}}}}`,
		`{"state":{"reported":null}}`,
		`{"state":{"reported":{"a":[1,{"b":2}],"c":"x","d":true,"e":null}}}`,
		`{"state":{"reported":{"n":1e400}}}`,
		`{"state":{"reported":{}},"version":9223372036854775807}`,
		`{"state":{"delta":{}}}`,
		`{"state":{"reported":{"x":{"y":{"z":{}}}}}}`,
		`{"state":{"reported":{"\u0000":"\ud800"}}}`,
		`[]`, `{"state":{"reported":1}}`, ``,
	} {
		f.Add([]byte(s))
	}
	base := Empty()
	if u, err := ParseUpdate([]byte(`{"state":{"reported":{"temp":20,"led":{"r":0}},"desired":{"fan":2}}}`)); err == nil {
		base = Apply(base, u, 1)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		u, err := ParseUpdate(body)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("refusal not ErrInvalid: %v", err)
			}
			return
		}
		next := Apply(base, u, 2)
		enc, err := json.Marshal(next)
		if err != nil {
			return // e.g. a number JSON accepts but cannot re-encode: Update refuses it as invalid
		}
		back, err := Decode(enc)
		if err != nil {
			t.Fatalf("decoding an encoded document: %v\n%s", err, enc)
		}
		enc2, _ := json.Marshal(back)
		if string(enc) != string(enc2) {
			t.Fatalf("round trip changed the document:\n%s\n%s", enc, enc2)
		}
		if got, want := jsonOf(t, next.State.Delta), jsonOf(t, Delta(next.State.Desired, next.State.Reported)); got != want {
			t.Fatalf("delta %s, want %s", got, want)
		}
		again := Apply(next, u, 2)
		if jsonOf(t, again.State) != jsonOf(t, next.State) || again.Version != next.Version+1 {
			t.Fatalf("applying the same update twice changed the state:\n%s\n%s", jsonOf(t, next.State), jsonOf(t, again.State))
		}
		if jsonOf(t, base.State) == "" {
			t.Fatal("unreachable")
		}
	})
}
