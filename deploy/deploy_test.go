package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The contract every deployment shares with the binary and the image.
const (
	mqttPort          = 1883
	mqttTLSPort       = 8883
	httpPort          = 8080
	dataDir           = "/var/lib/fleetgate"
	configPath        = "/etc/fleetgate/fleetgate.yaml"
	livenessPath      = "/healthz"
	readinessPath     = "/readyz"
	defaultShutdown   = 20 * time.Second // ingest.DefaultHTTPConfig().ShutdownTimeout
	imageUID          = 65532
	wasmExampleInImg  = "/usr/local/share/fleetgate/functions/threshold.wasm"
	healthcheckBinary = "/usr/local/bin/fleetgate-healthcheck"
)

// yamlFiles lists every YAML file under deploy/.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 8 {
		t.Fatalf("found only %d YAML files under deploy/: %v", len(files), files)
	}
	return files
}

// decodeAll decodes every document of a (multi-document) YAML file.
func decodeAll(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for i := 0; ; i++ {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML document", path)
	}
	return docs
}

// at walks a decoded YAML tree: string keys index maps, ints index lists. It fails the test
// when the path does not exist.
func at(t *testing.T, v any, path ...any) any {
	t.Helper()
	v, err := lookup(v, path...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func lookup(v any, path ...any) (any, error) {
	for i, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%v: not a map at %q", path[:i], k)
			}
			if v, ok = m[k]; !ok {
				return nil, fmt.Errorf("%v: no key %q", path[:i], k)
			}
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil, fmt.Errorf("%v: no element %d", path[:i], k)
			}
			v = l[k]
		}
	}
	return v, nil
}

func list(t *testing.T, v any, path ...any) []any {
	t.Helper()
	l, ok := at(t, v, path...).([]any)
	if !ok {
		t.Fatalf("%v: not a list", path)
	}
	return l
}

func str(t *testing.T, v any, path ...any) string {
	t.Helper()
	return fmt.Sprint(at(t, v, path...))
}

// gatewayConfig is the part of the gateway's config file the deployments must agree with.
type gatewayConfig struct {
	DataDir string `yaml:"data_dir"`
	MQTT    struct {
		Addr    string `yaml:"addr"`
		TLSAddr string `yaml:"tls_addr"`
	} `yaml:"mqtt"`
	HTTP struct {
		Addr            string        `yaml:"addr"`
		ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	} `yaml:"http"`
	Auth struct {
		Keys []struct {
			SecretFile    string `yaml:"secret_file"`
			PublicKeyFile string `yaml:"public_key_file"`
		} `yaml:"keys"`
		JWKSFile string `yaml:"jwks_file"`
	} `yaml:"auth"`
	Functions []struct {
		Name   string `yaml:"name"`
		Type   string `yaml:"type"`
		URL    string `yaml:"url"`
		Module string `yaml:"module"`
	} `yaml:"functions"`
}

func parseGatewayConfig(t *testing.T, name string, data []byte) gatewayConfig {
	t.Helper()
	var c gatewayConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if c.HTTP.ShutdownTimeout == 0 {
		c.HTTP.ShutdownTimeout = defaultShutdown
	}
	if c.DataDir != dataDir {
		t.Errorf("%s: data_dir = %q, want the image's volume %s", name, c.DataDir, dataDir)
	}
	for _, a := range []struct{ got, port string }{{c.MQTT.Addr, strconv.Itoa(mqttPort)}, {c.HTTP.Addr, strconv.Itoa(httpPort)}} {
		if a.got != "" && !strings.HasSuffix(a.got, ":"+a.port) {
			t.Errorf("%s: listen address %q is not on port %s, which the deployment publishes", name, a.got, a.port)
		}
	}
	for _, f := range c.Functions {
		if f.Type == "wasm" && f.Module != wasmExampleInImg {
			t.Errorf("%s: function %s: module %q is not in the image (%s is)", name, f.Name, f.Module, wasmExampleInImg)
		}
	}
	return c
}

// keyFiles are the files of the config's auth section that a deployment must provide.
func (c gatewayConfig) keyFiles() []string {
	var files []string
	for _, k := range c.Auth.Keys {
		for _, f := range []string{k.SecretFile, k.PublicKeyFile} {
			if f != "" {
				files = append(files, f)
			}
		}
	}
	if c.Auth.JWKSFile != "" {
		files = append(files, c.Auth.JWKSFile)
	}
	return files
}

func TestEveryYAMLParses(t *testing.T) {
	for _, f := range yamlFiles(t) {
		docs := decodeAll(t, f)
		t.Logf("%s: %d document(s)", f, len(docs))
	}
}

// TestNoMachinePaths guards the rule that committed files name no path of a build machine.
func TestNoMachinePaths(t *testing.T) {
	// The paths of the machine running the test: the checkout's parent and the home directory.
	var bad []string
	if abs, err := filepath.Abs(filepath.Join("..", "..")); err == nil && abs != "/" {
		bad = append(bad, abs+"/")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "/" {
		bad = append(bad, home+"/")
	}
	roots := []string{".", filepath.Join("..", "docs")}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, b := range bad {
				if bytes.Contains(data, []byte(b)) {
					t.Errorf("%s names a machine path (%s)", path, b)
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

// dockerfile is the parsed instruction list of a Dockerfile (continuation lines joined).
type dockerfile []struct{ op, args string }

func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out dockerfile
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue // a comment inside a continued instruction
		}
		cont := strings.HasSuffix(line, "\\")
		cur.WriteString(strings.TrimSuffix(line, "\\"))
		cur.WriteByte(' ')
		if cont {
			continue
		}
		op, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, struct{ op, args string }{strings.ToUpper(op), strings.TrimSpace(args)})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (d dockerfile) all(op string) []string {
	var out []string
	for _, in := range d {
		if in.op == op {
			out = append(out, in.args)
		}
	}
	return out
}

// finalStage returns the instructions after the last FROM.
func (d dockerfile) finalStage() dockerfile {
	for i := len(d) - 1; i >= 0; i-- {
		if d[i].op == "FROM" {
			return d[i:]
		}
	}
	return d
}

func TestDockerfile(t *testing.T) {
	d := parseDockerfile(t, filepath.Join("docker", "Dockerfile"))
	froms := d.all("FROM")
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, got FROM %v", froms)
	}
	if !strings.HasPrefix(froms[0], "golang:") || !strings.Contains(froms[0], " AS ") {
		t.Errorf("builder stage: FROM %s, want golang:<version> AS <name>", froms[0])
	}
	final := d.finalStage()
	if base := final[0].args; base != "scratch" && !strings.Contains(base, "distroless/static") {
		t.Errorf("final stage FROM %s: want a small static base (scratch or distroless static)", base)
	}
	var runs string
	for _, r := range d.all("RUN") {
		runs += r + "\n"
	}
	for _, e := range d.all("ENV") {
		runs += e + "\n"
	}
	if !strings.Contains(runs, "CGO_ENABLED=0") {
		t.Error("the build must set CGO_ENABLED=0 (a static binary for the static base)")
	}
	for _, pkg := range []string{"./cmd/fleetgate", "./deploy/docker/healthcheck", "./examples/functions/threshold"} {
		if !strings.Contains(runs, pkg) {
			t.Errorf("the build does not compile %s", pkg)
		}
		if _, err := os.Stat(filepath.Join("..", strings.TrimPrefix(pkg, "./"))); err != nil {
			t.Errorf("built package %s: %v", pkg, err)
		}
	}
	if !strings.Contains(runs, "GOOS=wasip1") || !strings.Contains(runs, wasmExampleInImg) {
		t.Errorf("the WASM example must be built with GOOS=wasip1 into %s", wasmExampleInImg)
	}
	for _, c := range d.all("COPY") {
		if strings.Contains(c, "--from=") {
			continue
		}
		fields := strings.Fields(c)
		for _, src := range fields[:len(fields)-1] {
			if strings.HasPrefix(src, "--") || src == "." {
				continue
			}
			if _, err := os.Stat(filepath.Join("..", src)); err != nil {
				t.Errorf("COPY %s: source missing in the repository: %v", src, err)
			}
		}
	}

	expose := strings.Fields(strings.Join(final.all("EXPOSE"), " "))
	for _, p := range []int{mqttPort, mqttTLSPort, httpPort} {
		if !slices.Contains(expose, strconv.Itoa(p)) {
			t.Errorf("EXPOSE %v lacks %d", expose, p)
		}
	}
	if vols := strings.Join(final.all("VOLUME"), " "); !strings.Contains(vols, `"`+dataDir+`"`) && !slices.Contains(strings.Fields(vols), dataDir) {
		t.Errorf("VOLUME %q: want %s", vols, dataDir)
	}
	users := final.all("USER")
	if len(users) == 0 {
		t.Fatal("final stage has no USER: the gateway would run as root")
	}
	if u, _, _ := strings.Cut(users[len(users)-1], ":"); u == "0" || u == "root" {
		t.Errorf("USER %s: must not be root", users[len(users)-1])
	}
	hc := strings.Join(final.all("HEALTHCHECK"), " ")
	if !strings.Contains(hc, livenessPath) || !strings.Contains(hc, healthcheckBinary) {
		t.Errorf("HEALTHCHECK %q: want %s probing %s", hc, healthcheckBinary, livenessPath)
	}
	ep := final.all("ENTRYPOINT")
	if want := `["fleetgate", "serve", "--config", "` + configPath + `"]`; len(ep) != 1 || ep[0] != want {
		t.Errorf("ENTRYPOINT %v, want %s", ep, want)
	}
	env := strings.Join(final.all("ENV"), " ")
	if !strings.Contains(env, "PATH=/usr/local/bin") || !strings.Contains(env, "FLEETGATE_CONFIG="+configPath) {
		t.Errorf("ENV %q: want PATH with /usr/local/bin (the entrypoint names fleetgate) and FLEETGATE_CONFIG (for `fleetgate token` in the container)", env)
	}

	// The config baked into the image.
	data, err := os.ReadFile(filepath.Join("docker", "fleetgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	parseGatewayConfig(t, "docker/fleetgate.yaml", data)
}

func TestCompose(t *testing.T) {
	doc := decodeAll(t, filepath.Join("compose", "compose.yaml"))[0]
	gw := at(t, doc, "services", "fleetgate")

	var ports []string
	for _, p := range list(t, gw, "ports") {
		ports = append(ports, fmt.Sprint(p))
	}
	for _, p := range []int{mqttPort, httpPort} {
		if !slices.ContainsFunc(ports, func(s string) bool { return strings.HasSuffix(s, ":"+strconv.Itoa(p)) }) {
			t.Errorf("fleetgate ports %v do not publish %d", ports, p)
		}
	}
	var mounts []string
	for _, v := range list(t, gw, "volumes") {
		mounts = append(mounts, fmt.Sprint(v))
	}
	hasMount := func(target string) (string, bool) {
		for _, m := range mounts {
			parts := strings.Split(m, ":")
			if len(parts) >= 2 && parts[1] == target {
				return parts[0], true
			}
		}
		return "", false
	}
	vol, ok := hasMount(dataDir)
	if !ok {
		t.Fatalf("fleetgate volumes %v: nothing at %s", mounts, dataDir)
	}
	if _, declared := at(t, doc, "volumes").(map[string]any)[vol]; !declared {
		t.Errorf("data volume %q is not a declared named volume", vol)
	}
	src, ok := hasMount(configPath)
	if !ok {
		t.Fatalf("fleetgate volumes %v: no config file at %s", mounts, configPath)
	}
	cfgData, err := os.ReadFile(filepath.Join("compose", src))
	if err != nil {
		t.Fatalf("config mounted from %s: %v", src, err)
	}
	cfg := parseGatewayConfig(t, "compose/"+src, cfgData)

	// Every key file the config names comes from a compose secret.
	secrets := at(t, doc, "secrets").(map[string]any)
	var used []string
	for _, s := range list(t, gw, "secrets") {
		name := fmt.Sprint(s)
		if _, ok := secrets[name]; !ok {
			t.Errorf("service secret %q is not declared at the top level", name)
		}
		used = append(used, "/run/secrets/"+name)
	}
	for _, f := range cfg.keyFiles() {
		if !slices.Contains(used, f) {
			t.Errorf("config names key file %s, but the service mounts only %v", f, used)
		}
	}
	for name := range secrets {
		file := str(t, secrets, name, "file")
		dir := filepath.Join("compose", filepath.Dir(file))
		if _, err := os.Stat(filepath.Join(dir, ".gitignore")); err != nil {
			t.Errorf("secret %s lives in %s, which must keep a .gitignore so keys are never committed", name, dir)
		}
	}

	grace, err := time.ParseDuration(str(t, gw, "stop_grace_period"))
	if err != nil {
		t.Fatal(err)
	}
	if grace <= cfg.HTTP.ShutdownTimeout {
		t.Errorf("stop_grace_period %s must exceed http.shutdown_timeout %s", grace, cfg.HTTP.ShutdownTimeout)
	}
	if hc := fmt.Sprint(at(t, gw, "healthcheck", "test")); !strings.Contains(hc, livenessPath) {
		t.Errorf("healthcheck %s does not probe %s", hc, livenessPath)
	}
	built := filepath.Join("compose", str(t, gw, "build", "context"), str(t, gw, "build", "dockerfile"))
	bi, err1 := os.Stat(built)
	di, err2 := os.Stat(filepath.Join("docker", "Dockerfile"))
	if err1 != nil || err2 != nil || !os.SameFile(bi, di) {
		t.Errorf("fleetgate is built from %s (%v), want deploy/docker/Dockerfile (%v)", built, err1, err2)
	}

	// Every http function points at a service of the file, on a port it exposes, with the
	// environment its headers need.
	services := at(t, doc, "services").(map[string]any)
	for _, f := range cfg.Functions {
		if f.Type != "http" {
			continue
		}
		hostPort := strings.TrimPrefix(strings.TrimPrefix(f.URL, "http://"), "https://")
		hostPort, _, _ = strings.Cut(hostPort, "/")
		host, port, _ := strings.Cut(hostPort, ":")
		svc, ok := services[host]
		if !ok {
			t.Errorf("function %s calls %s, which is not a compose service", f.Name, host)
			continue
		}
		var exposed []string
		for _, p := range list(t, svc, "expose") {
			exposed = append(exposed, fmt.Sprint(p))
		}
		if !slices.Contains(exposed, port) {
			t.Errorf("function %s calls port %s; %s exposes %v", f.Name, port, host, exposed)
		}
		if ctx := str(t, svc, "build"); ctx != "" {
			if _, err := os.Stat(filepath.Join("compose", ctx, "Dockerfile")); err != nil {
				t.Errorf("service %s: %v", host, err)
			}
		}
	}
	env := at(t, gw, "environment").(map[string]any)
	cfgText := string(cfgData)
	for rest := cfgText; ; {
		i := strings.Index(rest, "${env:")
		if i < 0 {
			break
		}
		name, _, _ := strings.Cut(rest[i+len("${env:"):], "}")
		if _, ok := env[name]; !ok {
			t.Errorf("config reads ${env:%s}, which the fleetgate service does not set", name)
		}
		rest = rest[i+1:]
	}
}

// kubeObjects decodes every manifest of kubernetes/ by kind/name.
func kubeObjects(t *testing.T) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		for _, d := range decodeAll(t, f) {
			key := str(t, d, "kind") + "/" + str(t, d, "metadata", "name")
			if _, dup := objs[key]; dup {
				t.Errorf("%s defined twice", key)
			}
			objs[key] = d
		}
	}
	return objs
}

func TestKubernetes(t *testing.T) {
	objs := kubeObjects(t)
	var sts map[string]any
	for k, o := range objs {
		if strings.HasPrefix(k, "StatefulSet/") {
			if sts != nil {
				t.Fatal("more than one StatefulSet")
			}
			sts = o
		}
	}
	if sts == nil {
		t.Fatalf("no StatefulSet among %v", slices.Sorted(func(yield func(string) bool) {
			for k := range objs {
				if !yield(k) {
					return
				}
			}
		}))
	}
	if r := str(t, sts, "spec", "replicas"); r != "1" {
		t.Errorf("replicas = %s: fleetgate is a single-node server", r)
	}
	pod := at(t, sts, "spec", "template")
	podLabels := at(t, pod, "metadata", "labels").(map[string]any)
	for k, v := range at(t, sts, "spec", "selector", "matchLabels").(map[string]any) {
		if podLabels[k] != v {
			t.Errorf("selector %s=%v does not match the pod labels %v", k, v, podLabels)
		}
	}
	if _, ok := objs["Service/"+str(t, sts, "spec", "serviceName")]; !ok {
		t.Errorf("serviceName %s is not a Service of the manifests", str(t, sts, "spec", "serviceName"))
	}
	if s := str(t, pod, "spec", "securityContext", "runAsNonRoot"); s != "true" {
		t.Errorf("pod runAsNonRoot = %s", s)
	}
	if s := str(t, pod, "spec", "securityContext", "fsGroup"); s != strconv.Itoa(imageUID) {
		t.Errorf("pod fsGroup = %s, want %d so the data volume is writable by the image's user", s, imageUID)
	}

	containers := list(t, pod, "spec", "containers")
	if len(containers) != 1 {
		t.Fatalf("%d containers, want 1", len(containers))
	}
	c := containers[0]
	ports := map[string]int{}
	for _, p := range list(t, c, "ports") {
		n, _ := strconv.Atoi(str(t, p, "containerPort"))
		ports[str(t, p, "name")] = n
	}
	if ports["mqtt"] != mqttPort || ports["http"] != httpPort {
		t.Errorf("container ports %v: want mqtt %d and http %d", ports, mqttPort, httpPort)
	}
	probe := func(name, wantPath string) {
		if p := str(t, c, name, "httpGet", "path"); p != wantPath {
			t.Errorf("%s path = %s, want %s", name, p, wantPath)
		}
		if port := str(t, c, name, "httpGet", "port"); port != "http" && port != strconv.Itoa(httpPort) {
			t.Errorf("%s port = %s, want http", name, port)
		}
	}
	probe("readinessProbe", readinessPath)
	probe("livenessProbe", livenessPath)
	for _, k := range []string{"cpu", "memory"} {
		if _, err := lookup(c, "resources", "requests", k); err != nil {
			t.Errorf("no resource request for %s: %v", k, err)
		}
	}
	sc := map[string]string{"readOnlyRootFilesystem": "true", "allowPrivilegeEscalation": "false", "runAsNonRoot": "true"}
	for k, want := range sc {
		if got := str(t, c, "securityContext", k); got != want {
			t.Errorf("container securityContext.%s = %s, want %s", k, got, want)
		}
	}
	if d := fmt.Sprint(at(t, c, "securityContext", "capabilities", "drop")); d != "[ALL]" {
		t.Errorf("capabilities.drop = %s, want [ALL]", d)
	}

	// Volumes: the data dir on a claim template, the config from the ConfigMap, the keys from
	// the Secret; with a read-only root, every other writable place is a volume.
	mounts := map[string]string{} // mountPath → volume name
	for _, m := range list(t, c, "volumeMounts") {
		mounts[str(t, m, "mountPath")] = str(t, m, "name")
	}
	var claims []string
	for _, v := range list(t, sts, "spec", "volumeClaimTemplates") {
		claims = append(claims, str(t, v, "metadata", "name"))
	}
	if !slices.Contains(claims, mounts[dataDir]) {
		t.Errorf("%s is mounted from %q, want one of the claim templates %v", dataDir, mounts[dataDir], claims)
	}
	volumes := map[string]any{}
	for _, v := range list(t, pod, "spec", "volumes") {
		volumes[str(t, v, "name")] = v
	}
	cmVol, ok := volumes[mounts[filepath.Dir(configPath)]]
	if !ok {
		t.Fatalf("nothing mounted at %s", filepath.Dir(configPath))
	}
	cm, ok := objs["ConfigMap/"+str(t, cmVol, "configMap", "name")]
	if !ok {
		t.Fatalf("config volume names ConfigMap %s, which is not in the manifests", str(t, cmVol, "configMap", "name"))
	}
	cfgText := str(t, cm, "data", filepath.Base(configPath))
	cfg := parseGatewayConfig(t, "ConfigMap "+str(t, cm, "metadata", "name"), []byte(cfgText))

	grace, _ := strconv.Atoi(str(t, pod, "spec", "terminationGracePeriodSeconds"))
	if time.Duration(grace)*time.Second <= cfg.HTTP.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %d must exceed http.shutdown_timeout %s", grace, cfg.HTTP.ShutdownTimeout)
	}

	// Each key file of the config is a key of a Secret mounted at its directory.
	for _, f := range cfg.keyFiles() {
		vol, ok := volumes[mounts[filepath.Dir(f)]]
		if !ok {
			t.Errorf("key file %s: nothing mounted at %s", f, filepath.Dir(f))
			continue
		}
		secName := str(t, vol, "secret", "secretName")
		sec, ok := objs["Secret/"+secName]
		if !ok {
			t.Errorf("key file %s: Secret %s is not in the manifests", f, secName)
			continue
		}
		_, inData := at(t, sec, "stringData").(map[string]any)[filepath.Base(f)]
		if !inData {
			t.Errorf("key file %s: Secret %s has no key %s", f, secName, filepath.Base(f))
		}
	}

	// Services: MQTT and HTTP, selecting the pod, by named container ports.
	served := map[int]bool{}
	for k, o := range objs {
		if !strings.HasPrefix(k, "Service/") {
			continue
		}
		for sk, sv := range at(t, o, "spec", "selector").(map[string]any) {
			if podLabels[sk] != sv {
				t.Errorf("%s selects %s=%v, not a pod label", k, sk, sv)
			}
		}
		for _, p := range list(t, o, "spec", "ports") {
			target := str(t, p, "targetPort")
			if n, ok := ports[target]; ok {
				served[n] = true
			} else if n, err := strconv.Atoi(target); err == nil {
				served[n] = true
			} else {
				t.Errorf("%s targets port %q, which the container does not name", k, target)
			}
		}
	}
	for _, p := range []int{mqttPort, httpPort} {
		if !served[p] {
			t.Errorf("no Service reaches port %d", p)
		}
	}
}

func TestKustomization(t *testing.T) {
	k := decodeAll(t, filepath.Join("kubernetes", "kustomization.yaml"))[0]
	var resources []string
	for _, r := range list(t, k, "resources") {
		resources = append(resources, fmt.Sprint(r))
	}
	files, _ := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(resources, b) {
			t.Errorf("%s is not listed in kustomization.yaml resources %v", b, resources)
		}
	}
	for _, r := range resources {
		if _, err := os.Stat(filepath.Join("kubernetes", r)); err != nil {
			t.Errorf("resource %s: %v", r, err)
		}
	}

	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed: kustomize build not checked")
	}
	out, err := exec.Command(kubectl, "kustomize", "kubernetes").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	var kinds []string
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kustomize output: %v", err)
		}
		if ns, err := lookup(doc, "metadata", "namespace"); doc["kind"] != "Namespace" && (err != nil || ns != str(t, k, "namespace")) {
			t.Errorf("%v/%v: namespace %v, want %s", doc["kind"], at(t, doc, "metadata", "name"), ns, str(t, k, "namespace"))
		}
		kinds = append(kinds, fmt.Sprint(doc["kind"]))
	}
	for _, want := range []string{"Namespace", "ConfigMap", "Secret", "Service", "StatefulSet"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("kustomize output has no %s (got %v)", want, kinds)
		}
	}
}

// unit is a parsed systemd unit: section → key → values (in order; a key may repeat).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value in a section: %q", path, i+1, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

func (u unit) last(section, key string) (string, bool) {
	v := u[section][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

func TestSystemdUnit(t *testing.T) {
	path := filepath.Join("systemd", "fleetgate.service")
	u := parseUnit(t, path)
	want := map[string]string{
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"CapabilityBoundingSet":   "",
		"StateDirectory":          "fleetgate",
		"RestrictSUIDSGID":        "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectControlGroups":    "yes",
		"SystemCallArchitectures": "native",
	}
	for k, w := range want {
		if got, ok := u.last("Service", k); !ok || got != w {
			t.Errorf("[Service] %s=%q (set: %v), want %q", k, got, ok, w)
		}
	}
	if rw, _ := u.last("Service", "ReadWritePaths"); !slices.Contains(strings.Fields(rw), dataDir) {
		t.Errorf("ReadWritePaths=%q lacks the data dir %s", rw, dataDir)
	}
	if v, ok := u.last("Service", "MemoryDenyWriteExecute"); ok && v == "yes" {
		t.Error("MemoryDenyWriteExecute=yes breaks the wasm runtime, which compiles to native code")
	}
	if user, _ := u.last("Service", "User"); user == "" || user == "root" {
		t.Errorf("User=%q: run as an unprivileged user", user)
	}
	stop, _ := u.last("Service", "TimeoutStopSec")
	d, err := time.ParseDuration(stop)
	if err != nil {
		n, err2 := strconv.Atoi(stop)
		if err2 != nil {
			t.Fatalf("TimeoutStopSec=%q: %v", stop, err)
		}
		d = time.Duration(n) * time.Second
	}
	if d <= defaultShutdown {
		t.Errorf("TimeoutStopSec=%s must exceed the shutdown timeout %s", d, defaultShutdown)
	}
	exe, _ := u.last("Service", "ExecStart")
	fields := strings.Fields(exe)
	if len(fields) < 2 || fields[1] != "serve" || !strings.Contains(exe, "--config") || !strings.Contains(exe, "--data-dir "+dataDir) {
		t.Errorf("ExecStart=%q: want fleetgate serve --config ... --data-dir %s", exe, dataDir)
	}
	if !strings.Contains(exe, "--config "+configPath) {
		t.Errorf("ExecStart=%q: want --config %s", exe, configPath)
	}

	// The sample config of the unit: key files come in as credentials.
	data, err := os.ReadFile(filepath.Join("systemd", "fleetgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseGatewayConfig(t, "systemd/fleetgate.yaml", data)
	const credDir = "/run/credentials/fleetgate.service/"
	var creds []string
	for _, lc := range u["Service"]["LoadCredential"] {
		name, src, _ := strings.Cut(lc, ":")
		creds = append(creds, name)
		if !strings.HasPrefix(src, "/etc/fleetgate/") {
			t.Errorf("LoadCredential=%s: keep key files under /etc/fleetgate", lc)
		}
	}
	for _, f := range cfg.keyFiles() {
		name, ok := strings.CutPrefix(f, credDir)
		if !ok || !slices.Contains(creds, name) {
			t.Errorf("config key file %s is not a credential the unit loads (LoadCredential=%v)", f, creds)
		}
	}

	if wb, _ := u.last("Install", "WantedBy"); wb != "multi-user.target" {
		t.Errorf("WantedBy=%q", wb)
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: unit not verified by systemd")
	}
	// verify checks that ExecStart is executable: point it at a binary that exists here.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(path)
	tmp := filepath.Join(t.TempDir(), "fleetgate.service")
	if err := os.WriteFile(tmp, bytes.ReplaceAll(data, []byte(fields[0]), []byte(self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", tmp).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(bytes.TrimSpace(out)) == 0 {
		t.Skipf("systemd-analyze verify cannot run here (exit %d, no message)", ee.ExitCode())
	}
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
