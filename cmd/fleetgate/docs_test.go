package main

// Tests that keep the operator's documentation and the deployment files true to the code:
// every config key is in docs/configuration.md (with its type and default), the docs name no
// key that is gone, every metric the gateway exposes is in docs/operations.md, and the
// configs shipped under deploy/ load, validate and start a real gateway.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fleetgate/fleetgate/functions"
	"github.com/fleetgate/fleetgate/ingest/auth"
)

const (
	docsConfigRef  = "../../docs/configuration.md"
	docsOperations = "../../docs/operations.md"
	docsSecurity   = "../../docs/security.md"
)

// configKey is one key path of the config file, e.g. "functions[].retry.max_age" or
// "auth.policies.<role>.publish".
type configKey struct {
	path string
	typ  reflect.Type
	leaf bool // a value, not a section
}

var durationType = reflect.TypeFor[time.Duration]()

// configKeys walks t (a struct) by its yaml tags: nested structs are sections, slices of
// structs are "name[]", maps of structs are "name.<key>".
func configKeys(t *testing.T, typ reflect.Type, prefix string, out *[]configKey) {
	t.Helper()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, ok := f.Tag.Lookup("yaml")
		if !ok {
			t.Errorf("%s.%s (%s) has no yaml tag: name its key explicitly", typ, f.Name, prefix)
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if strings.Contains(opts, "inline") {
			configKeys(t, ft, prefix, out)
			continue
		}
		p := name
		if prefix != "" {
			p = prefix + "." + name
		}
		switch {
		case ft.Kind() == reflect.Struct:
			*out = append(*out, configKey{path: p, typ: ft})
			configKeys(t, ft, p, out)
		case ft.Kind() == reflect.Slice && derefKind(ft.Elem()) == reflect.Struct:
			*out = append(*out, configKey{path: p, typ: ft})
			configKeys(t, deref(ft.Elem()), p+"[]", out)
		case ft.Kind() == reflect.Map && derefKind(ft.Elem()) == reflect.Struct:
			*out = append(*out, configKey{path: p, typ: ft})
			configKeys(t, deref(ft.Elem()), p+".<key>", out)
		default:
			*out = append(*out, configKey{path: p, typ: ft, leaf: true})
		}
	}
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func derefKind(t reflect.Type) reflect.Kind { return deref(t).Kind() }

var placeholderRE = regexp.MustCompile(`<[^>]*>`)

// normKey makes "auth.policies.<role>.admin" and "auth.policies.<key>.admin" the same key.
func normKey(p string) string { return placeholderRE.ReplaceAllString(p, "<>") }

// docRow is one row of a table in docs/configuration.md whose first cell is a `key.path`.
type docRow struct {
	line                       int
	key, typ, def, description string
}

var keyCellRE = regexp.MustCompile("^`([a-z0-9_]+(?:\\[\\]|\\.<[a-z_]+>|\\.[a-z0-9_]+)*)`$")

func parseDocRows(t *testing.T, path string) []docRow {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the configuration reference is missing: %v", err)
	}
	var rows []docRow
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		m := keyCellRE.FindStringSubmatch(cells[0])
		if m == nil {
			continue
		}
		if len(cells) < 4 {
			t.Errorf("%s:%d: a key row needs | key | type | default | meaning |, got %d cells", path, i+1, len(cells))
			continue
		}
		rows = append(rows, docRow{line: i + 1, key: m[1], typ: cells[1], def: cells[2], description: strings.Join(cells[3:], "|")})
	}
	return rows
}

// typeWord is what the type column must say for a key of type t.
func typeWord(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t.Kind() == reflect.Bool:
		return "bool"
	case t.Kind() == reflect.String:
		return "string"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "int"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "number"
	case t.Kind() == reflect.Slice:
		return "list"
	case t.Kind() == reflect.Map:
		return "map"
	}
	return "section"
}

// defaultOf returns the default value of key: from DefaultConfig, or for a function's keys
// from Definition.WithDefaults; ok is false for keys inside lists or maps without defaults.
func defaultOf(key string) (reflect.Value, bool) {
	var v reflect.Value
	rest := key
	switch {
	case strings.HasPrefix(key, "functions[]."):
		v = reflect.ValueOf(functions.Definition{}.WithDefaults())
		rest = strings.TrimPrefix(key, "functions[].")
	case strings.Contains(key, "[]") || strings.Contains(key, "<"):
		return reflect.Value{}, false
	default:
		v = reflect.ValueOf(DefaultConfig())
	}
	for _, name := range strings.Split(rest, ".") {
		v = fieldByYAML(v, name)
		if !v.IsValid() {
			return v, false
		}
	}
	return v, true
}

func fieldByYAML(v reflect.Value, name string) reflect.Value {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return reflect.Value{}
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return reflect.Value{}
	}
	for i := range v.NumField() {
		f := v.Type().Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == name {
			return v.Field(i)
		}
		if strings.Contains(f.Tag.Get("yaml"), "inline") {
			if r := fieldByYAML(v.Field(i), name); r.IsValid() {
				return r
			}
		}
	}
	return reflect.Value{}
}

var backticked = regexp.MustCompile("`([^`]*)`")

// checkDefault compares the default column with the code's default for scalar keys: a
// non-zero default must be written as a `literal` equal to it.
func checkDefault(t *testing.T, row docRow, v reflect.Value) {
	t.Helper()
	for v.Kind() == reflect.Pointer && !v.IsNil() {
		v = v.Elem() // an optional key whose default is filled in (e.g. functions[].qos)
	}
	if v.Kind() == reflect.Map || v.Kind() == reflect.Slice || v.Kind() == reflect.Struct {
		return
	}
	m := backticked.FindStringSubmatch(row.def)
	if v.IsZero() {
		return // "none", "0 (no limit)", "`\"\"`": any wording is fine for a zero default
	}
	if m == nil {
		t.Errorf("configuration.md:%d: `%s` defaults to %v in the code; write it as a `literal` in the default column (got %q)", row.line, row.key, v.Interface(), row.def)
		return
	}
	lit := strings.Trim(m[1], `"`)
	var same bool
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(lit)
		same = err == nil && d == time.Duration(v.Int())
	case v.CanInt():
		n, err := strconv.ParseInt(lit, 10, 64)
		same = err == nil && n == v.Int()
	case v.CanUint():
		n, err := strconv.ParseUint(lit, 10, 64)
		same = err == nil && n == v.Uint()
	case v.CanFloat():
		f, err := strconv.ParseFloat(lit, 64)
		same = err == nil && f == v.Float()
	case v.Kind() == reflect.Bool:
		same = lit == strconv.FormatBool(v.Bool())
	case v.Kind() == reflect.String:
		same = lit == v.String()
	}
	if !same {
		t.Errorf("configuration.md:%d: `%s` default is documented as %s, the code says %v", row.line, row.key, m[0], v.Interface())
	}
}

// TestConfigReferenceMatchesCode fails when a config key exists without documentation, when
// the docs name a key that does not exist, or when a documented type or default is wrong.
func TestConfigReferenceMatchesCode(t *testing.T) {
	var keys []configKey
	configKeys(t, reflect.TypeFor[Config](), "", &keys)
	if len(keys) < 50 {
		t.Fatalf("walked only %d keys: the reflection walk is broken", len(keys))
	}
	byKey := map[string]configKey{}
	for _, k := range keys {
		byKey[normKey(k.path)] = k
	}
	rows := parseDocRows(t, docsConfigRef)
	documented := map[string]docRow{}
	for _, r := range rows {
		n := normKey(r.key)
		if prev, dup := documented[n]; dup {
			t.Errorf("configuration.md:%d: `%s` documented twice (also line %d)", r.line, r.key, prev.line)
		}
		documented[n] = r
		k, ok := byKey[n]
		if !ok {
			t.Errorf("configuration.md:%d: `%s` is not a key of the config (renamed or removed?)", r.line, r.key)
			continue
		}
		if w := typeWord(k.typ); !strings.Contains(strings.ToLower(r.typ), w) {
			t.Errorf("configuration.md:%d: `%s` type column %q should say %q (%s)", r.line, r.key, r.typ, w, k.typ)
		}
		if strings.TrimSpace(r.description) == "" {
			t.Errorf("configuration.md:%d: `%s` has no meaning", r.line, r.key)
		}
		if v, ok := defaultOf(k.path); ok && k.leaf {
			checkDefault(t, r, v)
		}
	}
	var missing []string
	for _, k := range keys {
		if _, ok := documented[normKey(k.path)]; !ok && k.leaf {
			missing = append(missing, k.path+" ("+k.typ.String()+")")
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d config key(s) not documented in docs/configuration.md (add a | `key` | type | default | meaning | row):\n  %s",
			len(missing), strings.Join(missing, "\n  "))
	}
	t.Logf("%d keys (%d documented rows)", len(keys), len(rows))
}

// The reference test must itself notice drift: a key added to a config struct.
func TestConfigReferenceWalkSeesNestedKeys(t *testing.T) {
	type inner struct {
		X int `yaml:"x"`
	}
	type probe struct {
		A  inner            `yaml:"a"`
		L  []inner          `yaml:"l"`
		M  map[string]inner `yaml:"m"`
		P  *bool            `yaml:"p"`
		S  []string         `yaml:"s"`
		In inner            `yaml:",inline"`
		No string           `yaml:"-"`
	}
	var keys []configKey
	configKeys(t, reflect.TypeFor[probe](), "", &keys)
	var got []string
	for _, k := range keys {
		if k.leaf {
			got = append(got, normKey(k.path))
		}
	}
	want := []string{"a.x", "l[].x", "m.<>.x", "p", "s", "x"}
	if !slices.Equal(got, want) {
		t.Fatalf("leaf keys %v, want %v", got, want)
	}
}

// exposedMetrics returns the base names of g's fleetgate_ metrics (a histogram's _bucket, _sum
// and _count series count as the histogram).
func exposedMetrics(t *testing.T, g *gateway) []string {
	t.Helper()
	var buf bytes.Buffer
	g.metrics.WritePrometheus(&buf)
	series := map[string]bool{}
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, "fleetgate_") {
			series[line[:strings.IndexAny(line, "{ ")]] = true
		}
	}
	seen := map[string]bool{}
	for name := range series {
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && series[base+"_sum"] && series[base+"_count"] {
				name = base
				break
			}
		}
		seen[name] = true
	}
	if len(seen) < 20 {
		t.Fatalf("only %d fleetgate_ metrics exposed:\n%s", len(seen), buf.String())
	}
	return slices.Sorted(maps.Keys(seen))
}

var metricNameRE = regexp.MustCompile(`fleetgate_[a-z0-9_]+[a-z0-9]`)

// sourceMetricNames returns every fleetgate_ name in the module's non-test Go files.
func sourceMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range metricNameRE.FindAll(data, -1) {
			names[string(m)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// docsDeployConfig is one config file shipped under deploy/.
type docsDeployConfig struct {
	name string
	data []byte
	env  map[string]string // environment the deployment gives the gateway
}

func deployConfigs(t *testing.T) []docsDeployConfig {
	t.Helper()
	read := func(p string) []byte {
		b, err := os.ReadFile(filepath.Join("../../deploy", p))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var compose struct {
		Services map[string]struct {
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(read("compose/compose.yaml"), &compose); err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(read("kubernetes/configmap.yaml"), &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data["fleetgate.yaml"] == "" {
		t.Fatal("kubernetes/configmap.yaml has no data.fleetgate.yaml")
	}
	return []docsDeployConfig{
		{name: "docker/fleetgate.yaml", data: read("docker/fleetgate.yaml")},
		{name: "compose/fleetgate.yaml", data: read("compose/fleetgate.yaml"), env: compose.Services["fleetgate"].Environment},
		{name: "kubernetes/configmap.yaml data.fleetgate.yaml", data: []byte(cm.Data["fleetgate.yaml"])},
		{name: "systemd/fleetgate.yaml", data: read("systemd/fleetgate.yaml")},
	}
}

// TestDeployConfigsLoad: the configs under deploy/ load through the real loader (unknown keys
// refused) and validate without a problem.
func TestDeployConfigsLoad(t *testing.T) {
	for _, dc := range deployConfigs(t) {
		t.Run(dc.name, func(t *testing.T) {
			for k, v := range dc.env {
				t.Setenv(k, v)
			}
			path := filepath.Join(t.TempDir(), "fleetgate.yaml")
			if err := os.WriteFile(path, dc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := loadConfig(path)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

// localize rewrites a deployment config to run here: data dir, listeners on loopback, key
// files and wasm modules at local paths (the key file holding a fresh 64-character secret).
func localize(t *testing.T, cfg *Config, wasm, wasmCache string) {
	t.Helper()
	dir := t.TempDir()
	cfg.DataDir = filepath.Join(dir, "data")
	// Share the wasm compilation cache between the configs: compiling the module is the slow
	// part of a start.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(wasmCache, filepath.Join(cfg.DataDir, "wasm-cache")); err != nil {
		t.Fatal(err)
	}
	cfg.MQTT.Addr, cfg.HTTP.Addr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.MQTT.TLSAddr, cfg.MQTT.WSAddr = "", ""
	for i := range cfg.Auth.Keys {
		if cfg.Auth.Keys[i].SecretFile != "" {
			p := filepath.Join(dir, fmt.Sprintf("key%d", i))
			if err := os.WriteFile(p, []byte(strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg.Auth.Keys[i].SecretFile = p
		}
	}
	for i := range cfg.Functions {
		if cfg.Functions[i].Type == functions.TypeWASM {
			cfg.Functions[i].Module = wasm
		}
	}
}

// TestDeployConfigsStartGateway starts a real gateway on each deployment config (localized),
// checks that it answers its probes' paths, and that every metric it exposes is explained in
// docs/operations.md, which names no metric that does not exist.
func TestDeployConfigsStartGateway(t *testing.T) {
	wasm := buildThreshold(t)
	wasmCache := t.TempDir()
	ops, err := os.ReadFile(docsOperations)
	if err != nil {
		t.Fatalf("the operations guide is missing: %v", err)
	}
	documented := map[string]bool{}
	for _, m := range metricNameRE.FindAll(ops, -1) {
		documented[string(m)] = true
	}
	exposed := map[string]bool{}
	for _, dc := range deployConfigs(t) {
		t.Run(dc.name, func(t *testing.T) {
			for k, v := range dc.env {
				t.Setenv(k, v)
			}
			cfg := DefaultConfig()
			if err := decodeConfig(dc.data, &cfg); err != nil {
				t.Fatal(err)
			}
			localize(t, &cfg, wasm, wasmCache)
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			g, err := startGateway(cfg, false, log, io.Discard)
			if err != nil {
				t.Fatalf("starting a gateway on %s: %v", dc.name, err)
			}
			defer func() {
				if err := g.shutdown(10 * time.Second); err != nil {
					t.Errorf("shutdown: %v", err)
				}
			}()
			for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
				code, err := docsGet("http://" + g.http.Addr().String() + p)
				if err != nil || code != 200 {
					t.Errorf("GET %s: %d %v", p, code, err)
				}
			}
			for _, n := range exposedMetrics(t, g) {
				exposed[n] = true
			}
		})
	}
	if t.Failed() {
		return
	}
	var undocumented []string
	for n := range exposed {
		if !documented[n] {
			undocumented = append(undocumented, n)
		}
	}
	slices.Sort(undocumented)
	if len(undocumented) > 0 {
		t.Errorf("%d metric(s) exposed but not explained in docs/operations.md:\n  %s", len(undocumented), strings.Join(undocumented, "\n  "))
	}
	inSource := sourceMetricNames(t)
	for n := range documented {
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(n, suf); ok && exposed[base] {
				n = base // a histogram's series, as in a PromQL example
			}
		}
		if !exposed[n] && !inSource[n] {
			t.Errorf("docs/operations.md names %s, which the code does not expose", n)
		}
	}
	t.Logf("%d metrics exposed, %d named in operations.md", len(exposed), len(documented))
}

func docsGet(url string) (int, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// TestKubernetesSecretPlaceholderIsRefused: the placeholder key in kubernetes/secret.yaml must
// not start a gateway (a copy-pasted manifest fails closed instead of running on a known key).
func TestKubernetesSecretPlaceholderIsRefused(t *testing.T) {
	var sec struct {
		StringData map[string]string `yaml:"stringData"`
	}
	data, err := os.ReadFile("../../deploy/kubernetes/secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &sec); err != nil {
		t.Fatal(err)
	}
	placeholder, ok := sec.StringData["hs256.key"]
	if !ok {
		t.Fatal("secret.yaml has no stringData hs256.key")
	}
	p := filepath.Join(t.TempDir(), "hs256.key")
	if err := os.WriteFile(p, []byte(placeholder), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := auth.DefaultConfig()
	cfg.Keys = []auth.KeyConfig{{ID: "main", Alg: "HS256", SecretFile: p}}
	_, err = auth.New(cfg, auth.Options{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if !errors.Is(err, auth.ErrInvalidConfig) || !strings.Contains(err.Error(), "needs at least") {
		t.Fatalf("placeholder key: got %v, want a refusal for being too short", err)
	}
}

// TestDocsLinksResolve: relative links between the docs and deploy/README.md point at files
// that exist.
func TestDocsLinksResolve(t *testing.T) {
	link := regexp.MustCompile(`\]\(([^)#\s]+)(#[^)]*)?\)`)
	files := []string{docsConfigRef, docsOperations, docsSecurity, "../../deploy/README.md"}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		for _, m := range link.FindAllSubmatch(data, -1) {
			target := string(m[1])
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(f), target)); err != nil {
				t.Errorf("%s links to %s: %v", filepath.Base(f), target, err)
			}
		}
	}
}
