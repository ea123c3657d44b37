package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fleetgate/fleetgate/cluster"
)

// The cluster-mode deployments: deploy/compose/cluster and deploy/kubernetes/cluster.

// clusterSection parses the `cluster:` section of a gateway config and validates it with the
// gateway's own rules.
func clusterSection(t *testing.T, name string, data []byte) cluster.Config {
	t.Helper()
	var f struct {
		Cluster cluster.Config `yaml:"cluster"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	c := f.Cluster
	if !c.Enabled() {
		t.Fatalf("%s: no cluster section", name)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("%s: cluster section: %v", name, err)
	}
	if c.NATS.Embedded == nil {
		t.Fatalf("%s: the deployment runs NATS embedded (cluster.nats.embedded)", name)
	}
	return c
}

// routeHosts returns the host and port of each route of c.
func routeHosts(t *testing.T, name string, c cluster.Config) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range c.NATS.Embedded.Routes {
		u, err := url.Parse(r)
		if err != nil {
			t.Fatalf("%s: route %q: %v", name, r, err)
		}
		out[u.Hostname()] = u.Port()
	}
	return out
}

func listenPort(t *testing.T, hp string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hp)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestComposeCluster(t *testing.T) {
	dir := filepath.Join("compose", "cluster")
	doc := decodeAll(t, filepath.Join(dir, "compose.yaml"))[0]
	services := at(t, doc, "services").(map[string]any)
	var names []string
	for n := range services {
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) < 3 {
		t.Fatalf("services %v: a cluster of at least 3 nodes", names)
	}
	declaredVolumes := at(t, doc, "volumes").(map[string]any)
	secrets := at(t, doc, "secrets").(map[string]any)
	hostPorts := map[string]string{}
	dataVolumes := map[string]string{}
	nodes := map[string]string{}
	for _, svcName := range names {
		gw := services[svcName]
		built := filepath.Join(dir, str(t, gw, "build", "context"), str(t, gw, "build", "dockerfile"))
		bi, err1 := os.Stat(built)
		di, err2 := os.Stat(filepath.Join("docker", "Dockerfile"))
		if err1 != nil || err2 != nil || !os.SameFile(bi, di) {
			t.Errorf("%s is built from %s (%v), want deploy/docker/Dockerfile (%v)", svcName, built, err1, err2)
		}

		// Published ports: MQTT and HTTP, each host port once; never the route port.
		published := map[int]bool{}
		for _, p := range list(t, gw, "ports") {
			s := fmt.Sprint(p)
			host, container, ok := strings.Cut(s, ":")
			if !ok {
				t.Errorf("%s: port %q: want host:container", svcName, s)
				continue
			}
			if other, dup := hostPorts[host]; dup {
				t.Errorf("host port %s published by %s and %s", host, other, svcName)
			}
			hostPorts[host] = svcName
			n, _ := strconv.Atoi(container)
			published[n] = true
		}
		for _, p := range []int{mqttPort, httpPort} {
			if !published[p] {
				t.Errorf("%s does not publish %d", svcName, p)
			}
		}

		mounts := map[string]string{} // target → source
		for _, v := range list(t, gw, "volumes") {
			parts := strings.Split(fmt.Sprint(v), ":")
			if len(parts) >= 2 {
				mounts[parts[1]] = parts[0]
			}
		}
		vol := mounts[dataDir]
		if _, ok := declaredVolumes[vol]; !ok {
			t.Errorf("%s: data dir mounted from %q, not a declared named volume", svcName, vol)
		}
		if other, dup := dataVolumes[vol]; dup {
			t.Errorf("%s and %s share the data volume %s: each node needs its own", other, svcName, vol)
		}
		dataVolumes[vol] = svcName
		src := mounts[configPath]
		data, err := os.ReadFile(filepath.Join(dir, src))
		if err != nil {
			t.Fatalf("%s: config mounted from %q: %v", svcName, src, err)
		}
		name := "compose/cluster/" + src
		cfg := parseGatewayConfig(t, name, data)
		var used []string
		for _, s := range list(t, gw, "secrets") {
			if _, ok := secrets[fmt.Sprint(s)]; !ok {
				t.Errorf("%s: secret %v not declared", svcName, s)
			}
			used = append(used, "/run/secrets/"+fmt.Sprint(s))
		}
		for _, f := range cfg.keyFiles() {
			if !slices.Contains(used, f) {
				t.Errorf("%s names key file %s; %s mounts only %v", name, f, svcName, used)
			}
		}
		grace, err := time.ParseDuration(str(t, gw, "stop_grace_period"))
		if err != nil || grace <= cfg.HTTP.ShutdownTimeout {
			t.Errorf("%s: stop_grace_period %s (%v) must exceed http.shutdown_timeout %s", svcName, grace, err, cfg.HTTP.ShutdownTimeout)
		}
		if hc := fmt.Sprint(at(t, gw, "healthcheck", "test")); !strings.Contains(hc, livenessPath) {
			t.Errorf("%s: healthcheck %s does not probe %s", svcName, hc, livenessPath)
		}

		// The cluster section: this service's node, routes to every other service's route port.
		c := clusterSection(t, name, data)
		if other, dup := nodes[c.Node]; dup {
			t.Errorf("cluster.node %s used by %s and %s", c.Node, other, svcName)
		}
		nodes[c.Node] = svcName
		if c.Node != svcName {
			t.Errorf("%s: cluster.node %q, want the service name %q (its log lines and metrics name it)", name, c.Node, svcName)
		}
		if c.Replicas > len(names) {
			t.Errorf("%s: cluster.replicas %d with %d nodes", name, c.Replicas, len(names))
		}
		routePort := listenPort(t, c.NATS.Embedded.ClusterListen)
		if published[mustAtoi(t, routePort)] {
			t.Errorf("%s publishes the NATS route port %s: it must stay on the compose network", svcName, routePort)
		}
		hosts := routeHosts(t, name, c)
		for _, other := range names {
			if other == svcName {
				continue
			}
			if p, ok := hosts[other]; !ok || p != routePort {
				t.Errorf("%s: routes %v do not reach %s on its route port %s", name, c.NATS.Embedded.Routes, other, routePort)
			}
		}
		for h := range hosts {
			if _, ok := services[h]; !ok {
				t.Errorf("%s: route host %s is not a service", name, h)
			}
		}
	}
	for name := range secrets {
		file := str(t, secrets, name, "file")
		if _, err := os.Stat(filepath.Join(dir, filepath.Dir(file), ".gitignore")); err != nil {
			t.Errorf("secret %s lives in %s, which must keep a .gitignore", name, filepath.Dir(file))
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestKubernetesCluster(t *testing.T) {
	dir := filepath.Join("kubernetes", "cluster")
	objs := map[string]map[string]any{}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
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
		t.Fatal("no StatefulSet")
	}
	stsName := str(t, sts, "metadata", "name")
	replicas := mustAtoi(t, str(t, sts, "spec", "replicas"))
	if replicas != 3 {
		t.Errorf("replicas %d, want 3", replicas)
	}
	if p := str(t, sts, "spec", "podManagementPolicy"); p != "Parallel" {
		t.Errorf("podManagementPolicy %s: with OrderedReady the first pod waits forever for a quorum", p)
	}
	svcName := str(t, sts, "spec", "serviceName")
	headless, ok := objs["Service/"+svcName]
	if !ok {
		t.Fatalf("serviceName %s is not a Service of the manifests", svcName)
	}
	if ip := str(t, headless, "spec", "clusterIP"); ip != "None" {
		t.Errorf("Service %s: clusterIP %s, want None (headless: stable pod names for the routes)", svcName, ip)
	}
	if p := str(t, headless, "spec", "publishNotReadyAddresses"); p != "true" {
		t.Errorf("Service %s: publishNotReadyAddresses %s: pods must resolve each other before they are ready", svcName, p)
	}

	pod := at(t, sts, "spec", "template")
	podLabels := at(t, pod, "metadata", "labels").(map[string]any)
	for k, v := range at(t, sts, "spec", "selector", "matchLabels").(map[string]any) {
		if podLabels[k] != v {
			t.Errorf("selector %s=%v does not match the pod labels %v", k, v, podLabels)
		}
	}
	if s := str(t, pod, "spec", "securityContext", "fsGroup"); s != strconv.Itoa(imageUID) {
		t.Errorf("pod fsGroup = %s, want %d", s, imageUID)
	}
	c := list(t, pod, "spec", "containers")[0]
	ports := map[string]int{}
	for _, p := range list(t, c, "ports") {
		ports[str(t, p, "name")] = mustAtoi(t, str(t, p, "containerPort"))
	}
	if ports["mqtt"] != mqttPort || ports["http"] != httpPort || ports["nats-route"] == 0 {
		t.Errorf("container ports %v: want mqtt %d, http %d and nats-route", ports, mqttPort, httpPort)
	}
	if p := str(t, c, "readinessProbe", "httpGet", "path"); p != readinessPath {
		t.Errorf("readiness probe %s, want %s (ready = has a quorum)", p, readinessPath)
	}
	if p := str(t, c, "livenessProbe", "httpGet", "path"); p != livenessPath {
		t.Errorf("liveness probe %s, want %s (not the quorum: restarting a cut-off pod does not help)", p, livenessPath)
	}
	if d := fmt.Sprint(at(t, c, "securityContext", "capabilities", "drop")); d != "[ALL]" {
		t.Errorf("capabilities.drop = %s", d)
	}

	// Each pod reads /etc/fleetgate/$(POD_NAME).yaml, POD_NAME from the downward API.
	cmd := fmt.Sprint(at(t, c, "command"))
	if !strings.Contains(cmd, "--config") || !strings.Contains(cmd, filepath.Dir(configPath)+"/$(POD_NAME).yaml") {
		t.Errorf("command %s: want --config %s/$(POD_NAME).yaml", cmd, filepath.Dir(configPath))
	}
	podNameEnv := false
	for _, e := range list(t, c, "env") {
		if str(t, e, "name") == "POD_NAME" && str(t, e, "valueFrom", "fieldRef", "fieldPath") == "metadata.name" {
			podNameEnv = true
		}
	}
	if !podNameEnv {
		t.Error("no POD_NAME env from metadata.name")
	}

	mounts := map[string]string{}
	for _, m := range list(t, c, "volumeMounts") {
		mounts[str(t, m, "mountPath")] = str(t, m, "name")
	}
	var claims []string
	for _, v := range list(t, sts, "spec", "volumeClaimTemplates") {
		claims = append(claims, str(t, v, "metadata", "name"))
	}
	if !slices.Contains(claims, mounts[dataDir]) {
		t.Errorf("%s is mounted from %q, want a claim template (a volume per pod) among %v", dataDir, mounts[dataDir], claims)
	}
	volumes := map[string]any{}
	for _, v := range list(t, pod, "spec", "volumes") {
		volumes[str(t, v, "name")] = v
	}
	cm, ok := objs["ConfigMap/"+str(t, volumes[mounts[filepath.Dir(configPath)]], "configMap", "name")]
	if !ok {
		t.Fatal("the config volume names no ConfigMap of the manifests")
	}
	grace := mustAtoi(t, str(t, pod, "spec", "terminationGracePeriodSeconds"))

	// The single-node manifests' Secret holds the keys (applied once per namespace).
	secret := decodeAll(t, filepath.Join("kubernetes", "secret.yaml"))[0]
	secretName := str(t, volumes[mounts["/run/secrets/fleetgate"]], "secret", "secretName")
	if secretName != str(t, secret, "metadata", "name") {
		t.Errorf("keys from Secret %s; deploy/kubernetes/secret.yaml defines %s", secretName, str(t, secret, "metadata", "name"))
	}

	data := at(t, cm, "data").(map[string]any)
	if len(data) != replicas {
		t.Errorf("ConfigMap has %d files for %d replicas", len(data), replicas)
	}
	for i := range replicas {
		podName := fmt.Sprintf("%s-%d", stsName, i)
		file := podName + ".yaml"
		text, ok := data[file].(string)
		if !ok {
			t.Errorf("ConfigMap has no %s for pod %s", file, podName)
			continue
		}
		name := "ConfigMap " + file
		cfg := parseGatewayConfig(t, name, []byte(text))
		if time.Duration(grace)*time.Second <= cfg.HTTP.ShutdownTimeout {
			t.Errorf("%s: terminationGracePeriodSeconds %d must exceed http.shutdown_timeout %s", name, grace, cfg.HTTP.ShutdownTimeout)
		}
		for _, f := range cfg.keyFiles() {
			if _, ok := at(t, secret, "stringData").(map[string]any)[filepath.Base(f)]; !ok || filepath.Dir(f) != "/run/secrets/fleetgate" {
				t.Errorf("%s: key file %s is not in Secret %s", name, f, secretName)
			}
		}
		cc := clusterSection(t, name, []byte(text))
		if cc.Node != podName {
			t.Errorf("%s: cluster.node %q, want the pod name %q", name, cc.Node, podName)
		}
		if cc.Replicas != replicas {
			t.Errorf("%s: cluster.replicas %d, StatefulSet replicas %d", name, cc.Replicas, replicas)
		}
		routePort := listenPort(t, cc.NATS.Embedded.ClusterListen)
		if mustAtoi(t, routePort) != ports["nats-route"] {
			t.Errorf("%s: cluster_listen port %s, container port nats-route %d", name, routePort, ports["nats-route"])
		}
		hosts := routeHosts(t, name, cc)
		for j := range replicas {
			if j == i {
				continue
			}
			want := fmt.Sprintf("%s-%d.%s", stsName, j, svcName)
			if p, ok := hosts[want]; !ok || p != routePort {
				t.Errorf("%s: routes %v do not name %s:%s", name, cc.NATS.Embedded.Routes, want, routePort)
			}
		}
	}

	// Services select the pods, by named ports.
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
			if _, ok := ports[str(t, p, "targetPort")]; !ok {
				t.Errorf("%s targets port %s, which the container does not name", k, str(t, p, "targetPort"))
			}
		}
	}
	if _, ok := objs["Service/fleetgate-mqtt"]; !ok {
		t.Error("no fleetgate-mqtt Service")
	}

	// The kustomization lists every file and builds.
	k := decodeAll(t, filepath.Join(dir, "kustomization.yaml"))[0]
	var resources []string
	for _, r := range list(t, k, "resources") {
		resources = append(resources, fmt.Sprint(r))
	}
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(resources, b) {
			t.Errorf("%s is not listed in %s/kustomization.yaml", b, dir)
		}
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed: kustomize build not checked")
	}
	out, err := exec.Command(kubectl, "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var d map[string]any
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kustomize output: %v", err)
		}
		if ns, err := lookup(d, "metadata", "namespace"); err != nil || ns != str(t, k, "namespace") {
			t.Errorf("%v/%v: namespace %v, want %s", d["kind"], at(t, d, "metadata", "name"), ns, str(t, k, "namespace"))
		}
	}
}
