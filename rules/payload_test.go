package rules

import (
	"encoding/json"
	"reflect"
	"testing"
)

func checkPayloadLikeEncodingJSON(t *testing.T, data []byte) {
	t.Helper()
	var want any
	wantErr := json.Unmarshal(data, &want)
	got, err := parsePayload(data)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("parsePayload(%q): err %v, encoding/json err %v", data, err, wantErr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("parsePayload(%q) = %#v, encoding/json %#v", data, got, want)
	}
}

var payloadSeeds = []string{
	`{"temp": 21.5, "on": true, "off": false, "none": null, "list": [1, -2, 3e2, 0.5E-1], "o": {"a": {}}, "e": []}`,
	`"caf\u00e9 \ud83d\ude00 \ud800 x\"\\\/\b\f\n\r\t"`, "\"\xff\xfe bad utf8 \xe2\x82\"", `-0`, `0.0`, `1e400`, `01`, `1.`, `.5`, `-`,
	`{"a":1,}`, `[1,]`, `{"a" 1}`, `{a:1}`, `tru`, `nul`, ` [ ] `, `{} x`, "\"\x01\"", `"\u12"`, `"\q"`, `{"a":1,"a":2}`, ``, `   `,
	`[[[[[[[[[[]]]]]]]]]]`, `"\uD834\uDD1E"`, `"\uDD1E\uD834"`, `1E+2`, `-1.5e-3`, `[1 2]`, `{"x":[{"y":"z"}]}`,
}

func TestParsePayloadMatchesEncodingJSON(t *testing.T) {
	for _, s := range payloadSeeds {
		checkPayloadLikeEncodingJSON(t, []byte(s))
	}
}

// FuzzParsePayload: the payload parser accepts exactly what encoding/json accepts and yields
// the same values.
func FuzzParsePayload(f *testing.F) {
	for _, s := range payloadSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkPayloadLikeEncodingJSON(t, data) })
}
