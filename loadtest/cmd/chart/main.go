// Command chart turns the measurements of loadtest/bench-peers.sh (one JSON line per
// server and case) into loadtest/RESULTS.md (tables) and a PNG chart of the same figures.
//
//	go run ./loadtest/cmd/chart -in loadtest/results.jsonl -md loadtest/RESULTS.md -png loadtest/results.png [-notes loadtest/NOTES.md] [-disk loadtest/disk.json]
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// record is one line of results.jsonl: what the script measured of one server in one case.
type record struct {
	Peer       string  `json:"peer"`
	Case       string  `json:"case"`
	Version    string  `json:"version"`
	Exit       int     `json:"exit"`
	ServerDied bool    `json:"server_died"`
	CPUSeconds float64 `json:"cpu_seconds"`
	PeakRSSKB  float64 `json:"peak_rss_kb"`
	Result     result  `json:"result"`

	// Filled by medians: how many runs this record stands for and their throughput range.
	Runs             int     `json:"-"`
	MinRate, MaxRate float64 `json:"-"`
}

// result holds the fields of the generator's --json output the report uses.
type result struct {
	Mode         string  `json:"mode"`
	Clients      int     `json:"clients"`
	QoS          int     `json:"qos"`
	Inflight     int     `json:"inflight"`
	Concurrency  int     `json:"concurrency"`
	Batch        int     `json:"batch"`
	Size         int     `json:"size"`
	Rate         float64 `json:"rate"`
	Sent         int64   `json:"sent"`
	Acked        int64   `json:"acked"`
	Errors       int64   `json:"errors"`
	Seconds      float64 `json:"seconds"`
	MsgsPerSec   float64 `json:"msgs_per_sec"`
	EventsPerSec float64 `json:"events_per_sec"`
	FirstError   string  `json:"first_error"`
	AckLatency   latency `json:"ack_latency_ms"`
	E2E          *struct {
		Expected         int64   `json:"expected"`
		Received         int64   `json:"received"`
		Lost             int64   `json:"lost"`
		Duplicates       int64   `json:"duplicates"`
		UnackedDelivered int64   `json:"unacked_delivered"`
		Batches          int64   `json:"batches"`
		MeanBatch        float64 `json:"mean_batch"`
		Latency          latency `json:"latency_ms"`
	} `json:"e2e"`
}

type latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

func (r *record) rate() float64 {
	if r.Result.Mode == "http" {
		return r.Result.EventsPerSec
	}
	return r.Result.MsgsPerSec
}

// cpuPer100k is server CPU seconds per 100 000 acknowledged messages.
func (r *record) cpuPer100k() float64 {
	if r.Result.Acked == 0 {
		return 0
	}
	return r.CPUSeconds / float64(r.Result.Acked) * 100000
}

// caseOrder and caseTitle give the cases a fixed order and a readable name.
var caseOrder = []string{"mqtt-qos1-10conn", "mqtt-qos1-1conn-256", "mqtt-qos0-10conn", "mqtt-qos1-10conn-10k", "http-batch1", "http-batch100", "e2e-qos1-10conn"}

var caseTitle = map[string]string{
	"mqtt-qos1-10conn":     "MQTT QoS1, 10 conns",
	"mqtt-qos1-1conn-256":  "MQTT QoS1, 1 conn, 256 in flight",
	"mqtt-qos0-10conn":     "MQTT QoS0, 10 conns",
	"mqtt-qos1-10conn-10k": "MQTT QoS1, 10 conns, 10k msgs/s",
	"http-batch1":          "HTTP, batch 1",
	"http-batch100":        "HTTP, batch 100",
	"e2e-qos1-10conn":      "end-to-end MQTT QoS1 → function",
}

var peerOrder = []string{"fleetgate", "mosquitto", "nats", "bare", "bare-goroutine", "bare-epoll"}

func main() {
	in := flag.String("in", "loadtest/results.jsonl", "measurements, one JSON object per line")
	md := flag.String("md", "loadtest/RESULTS.md", "Markdown report to write")
	png := flag.String("png", "loadtest/results.png", "PNG chart to write")
	notes := flag.String("notes", "", "Markdown file appended to the report as its notes")
	disk := flag.String("disk", "", "the disk's fdatasync latency (fleetgate-loadtest fsync --json), shown beside the machine")
	flag.Parse()
	if err := run(*in, *md, *png, *notes, *disk); err != nil {
		fmt.Fprintf(os.Stderr, "chart: %v\n", err)
		os.Exit(1)
	}
}

func run(in, mdPath, pngPath, notesPath, diskPath string) error {
	all, err := readRecords(in)
	if err != nil {
		return err
	}
	recs := medians(all)
	if len(recs) == 0 {
		return fmt.Errorf("reading %s: no measurements", in)
	}
	var notes []byte
	if notesPath != "" {
		if notes, err = os.ReadFile(notesPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("reading notes: %w", err)
		}
	}
	var disk *diskLatency
	if diskPath != "" {
		b, err := os.ReadFile(diskPath)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("reading the disk's latency: %w", err)
		}
		if err == nil {
			disk = new(diskLatency)
			if err := json.Unmarshal(b, disk); err != nil {
				return fmt.Errorf("reading the disk's latency from %s: %w", diskPath, err)
			}
		}
	}
	var buf bytes.Buffer
	writeReport(&buf, recs, all, filepath.Base(pngPath), notes, disk)
	if err := os.WriteFile(mdPath, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	return writeChart(pngPath, recs)
}

func readRecords(path string) ([]record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading measurements: %w", err)
	}
	defer f.Close()
	var recs []record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var r record
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		recs = append(recs, r)
	}
	return recs, sc.Err()
}

// medians keeps, for every (peer, case), among the runs whose server survived, the run with the median throughput (the lower
// middle one for an even count), noting how many runs there were and their range.
func medians(all []record) []record {
	type key struct{ peer, c string }
	groups := map[key][]record{}
	var order []key
	for _, r := range all {
		if r.ServerDied {
			continue // listed under errors; its CPU and memory are unknown
		}
		k := key{r.Peer, r.Case}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	out := make([]record, 0, len(order))
	for _, k := range order {
		g := groups[k]
		slices.SortFunc(g, func(a, b record) int { return cmp.Compare(a.rate(), b.rate()) })
		m := g[(len(g)-1)/2]
		m.Runs, m.MinRate, m.MaxRate = len(g), g[0].rate(), g[len(g)-1].rate()
		out = append(out, m)
	}
	return out
}

func find(recs []record, peer, c string) *record {
	for i := range recs {
		if recs[i].Peer == peer && recs[i].Case == c {
			return &recs[i]
		}
	}
	return nil
}

func cases(recs []record) []string {
	var out []string
	for _, c := range caseOrder {
		for _, r := range recs {
			if r.Case == c {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

func peers(recs []record) []string {
	var out []string
	for _, p := range peerOrder {
		for _, r := range recs {
			if r.Peer == p {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

func describe(r *record) string {
	x := r.Result
	switch {
	case x.Mode == "http":
		return fmt.Sprintf("%s, %s per request, %d B each", plural(x.Concurrency, "connection"), plural(x.Batch, "event"), x.Size)
	case x.Rate > 0:
		return fmt.Sprintf("%s, QoS %d, open loop at %.0f msgs/s, %d B", plural(x.Clients, "connection"), x.QoS, x.Rate, x.Size)
	case x.QoS == 0:
		return fmt.Sprintf("%s, QoS 0, %d B", plural(x.Clients, "connection"), x.Size)
	default:
		return fmt.Sprintf("%s, QoS %d, %d in flight per connection, %d B", plural(x.Clients, "connection"), x.QoS, x.Inflight, x.Size)
	}
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// diskLatency is what fleetgate-loadtest fsync --json prints.
type diskLatency struct {
	Size        int      `json:"size"`
	Latency     latency  `json:"fdatasync_latency_ms"`
	BusyCores   int      `json:"busy_cores"`
	BusyLatency *latency `json:"busy_fdatasync_latency_ms"`
}

func writeReport(w io.Writer, recs, all []record, pngName string, notes []byte, disk *diskLatency) {
	fmt.Fprintf(w, "# fleetgate side by side with mosquitto and NATS\n\n")
	fmt.Fprintf(w, "Generated by `make bench-peers` (`loadtest/bench-peers.sh`, then `go run ./loadtest/cmd/chart`) on %s.\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Do not edit by hand: the raw measurements are in [`results.jsonl`](results.jsonl); the notes come from [`NOTES.md`](NOTES.md).\n\n")
	fmt.Fprintf(w, "**Machine:** %s; %d logical CPUs; %s; %s. Servers and load generator share the machine and talk over loopback; every server is started fresh, with its data in a temporary directory, for every case.\n\n",
		cpuModel(), runtime.NumCPU(), kernel(), runtime.Version())
	if disk != nil {
		fmt.Fprintf(w, "**Disk:** an append of %d bytes made durable with `fdatasync`, in the directory the servers' data is in (`fleetgate-loadtest fsync`): p50 %.2f ms, p99 %.2f ms (%d appends). It is the floor of a durable acknowledgement: a commit of fleetgate's log is one such append, shared by every message that waits for it.\n\n",
			disk.Size, disk.Latency.P50, disk.Latency.P99, disk.Latency.Count)
		if b := disk.BusyLatency; b != nil {
			fmt.Fprintf(w, "The same appends while %d core(s) spin (`fsync --busy %d`), as when a server and its load share the machine: p50 %.2f ms, p99 %.2f ms.\n\n",
				disk.BusyCores, disk.BusyCores, b.P50, b.P99)
		}
	}
	fmt.Fprintf(w, "**Servers:**")
	seen := map[string]bool{}
	for _, p := range peers(recs) {
		for _, r := range recs {
			if r.Peer == p && !seen[r.Version] {
				seen[r.Version] = true
				fmt.Fprintf(w, " %s: %s;", p, r.Version)
				break
			}
		}
	}
	fmt.Fprintf(w, " client: `fleetgate-loadtest` (paho.mqtt.golang / fasthttp) for all.\n\n")

	fmt.Fprintf(w, "## How to read this\n\n")
	fmt.Fprintf(w, "- **msgs/s** (events/s for HTTP): acknowledged messages divided by the time from the first publish to the last ack. The generator is closed-loop (it sends the next message as soon as the window allows), so this is the most the server sustained with that window, not an arrival rate. Rows whose load says \"open loop\" are the exception: there the generator sends at that rate whatever the answers, as devices do, so msgs/s is the rate and CPU s / 100k is the figure to compare.\n")
	fmt.Fprintf(w, "- **bare**, **bare-goroutine**, **bare-epoll**: baselines that store nothing (`fleetgate-loadtest bare-http`, `bare-mqtt --mode goroutine|epoll`): a fasthttp handler that answers 202, and an MQTT answerer (CONNACK, PUBACK) with a goroutine per connection, as Go servers (mochi-mqtt, so fleetgate) read, or with one epoll loop, as mosquitto reads. They are the floor of each case in Go, in each shape.\n")
	fmt.Fprintf(w, "- **p50 / p99 ack**: milliseconds from publish (or request) to PUBACK (or HTTP answer), from an HDR histogram. In closed-loop cases they include waiting behind the other messages in the window, so they grow with the window: compare servers within a row, not across rows. At QoS 0 there is no ack; the figure is the time to hand the message to the socket.\n")
	fmt.Fprintf(w, "- **CPU s / 100k**: the server process's user+system CPU (from `/proc/<pid>/stat`) during the run, per 100 000 acknowledged messages. Lower is better; it is the cost that stays when the machine is bigger.\n")
	fmt.Fprintf(w, "- **peak RSS**: the server's `VmHWM` (peak resident memory) over its life, startup included.\n")
	fmt.Fprintf(w, "- The durability promise differs: fleetgate acknowledges after an fsync of the event; mosquitto (no persistence configured, its default) acknowledges from memory; nats-server stores QoS 1 messages in JetStream's file store, which writes but by default does not fsync before the ack. Read the notes below.\n\n")
	fmt.Fprintf(w, "![chart](%s)\n\n", pngName)

	fmt.Fprintf(w, "## Results\n\n")
	fmt.Fprintf(w, "Each row is the median run (by throughput) of the runs shown; the range is the lowest and highest throughput of those runs.\n\n")
	fmt.Fprintf(w, "| case | load | server | msgs/s | p50 ack ms | p99 ack ms | CPU s / 100k | peak RSS MB | acked | errors | runs: msgs/s range |\n")
	fmt.Fprintf(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, c := range cases(recs) {
		for _, p := range peers(recs) {
			r := find(recs, p, c)
			if r == nil {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %.0f | %.2f | %.2f | %.2f | %.1f | %d | %d | %d: %.0f–%.0f |\n",
				caseTitle[c], describe(r), p, r.rate(), r.Result.AckLatency.P50, r.Result.AckLatency.P99,
				r.cpuPer100k(), r.PeakRSSKB/1024, r.Result.Acked, r.Result.Errors, r.Runs, r.MinRate, r.MaxRate)
		}
	}
	fmt.Fprintln(w)

	var e2e []*record
	for i := range recs {
		if recs[i].Result.E2E != nil {
			e2e = append(e2e, &recs[i])
		}
	}
	if len(e2e) > 0 {
		fmt.Fprintf(w, "## End to end: acknowledgement → function invocation\n\n")
		fmt.Fprintf(w, "The generator runs the HTTP function endpoint itself, tags each message with a unique id, and matches what the function receives with what was acknowledged.\n\n")
		fmt.Fprintf(w, "| server | load | acked | received | lost | duplicates | p50 ms | p90 ms | p99 ms | max ms | events per invocation |\n")
		fmt.Fprintf(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range e2e {
			e := r.Result.E2E
			fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %d | %.2f | %.2f | %.2f | %.2f | %.1f |\n",
				r.Peer, describe(r), e.Expected, e.Received, e.Lost, e.Duplicates,
				e.Latency.P50, e.Latency.P90, e.Latency.P99, e.Latency.Max, e.MeanBatch)
		}
		fmt.Fprintln(w)
	}

	var failed []string
	for _, r := range all {
		if r.ServerDied {
			failed = append(failed, fmt.Sprintf("- %s / %s: the server exited during the run (%d of %d acknowledged)", r.Peer, r.Case, r.Result.Acked, r.Result.Sent))
		} else if r.Result.FirstError != "" || r.Exit != 0 {
			failed = append(failed, fmt.Sprintf("- %s / %s (exit %d): %s", r.Peer, r.Case, r.Exit, r.Result.FirstError))
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "## Errors seen\n\n%s\n\n", strings.Join(failed, "\n"))
	}
	if len(bytes.TrimSpace(notes)) > 0 {
		fmt.Fprintf(w, "## Notes\n\n%s\n", bytes.TrimSpace(notes))
	}
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func kernel() string {
	out, err := exec.Command("uname", "-sr").Output()
	if err != nil {
		return runtime.GOOS
	}
	return strings.TrimSpace(string(out))
}

// panel is one bar chart of the figure: a value per (case, peer).
type panel struct {
	title, unit string
	value       func(*record) float64
}

func writeChart(path string, recs []record) error {
	panels := []panel{
		{"Throughput (higher is better; median run)", "msgs/s or events/s", (*record).rate},
		{"p50 ack latency (lower is better)", "ms", func(r *record) float64 { return r.Result.AckLatency.P50 }},
		{"p99 ack latency (lower is better)", "ms", func(r *record) float64 { return r.Result.AckLatency.P99 }},
		{"Server CPU per 100k messages (lower is better)", "CPU seconds", (*record).cpuPer100k},
		{"Server peak RSS (lower is better)", "MB", func(r *record) float64 { return r.PeakRSSKB / 1024 }},
	}
	cs := slices.DeleteFunc(cases(recs), func(c string) bool { return strings.HasPrefix(c, "e2e") })
	ps := peers(recs)
	labels := make([]string, len(cs))
	for i, c := range cs {
		labels[i] = strings.ReplaceAll(caseTitle[c], ", ", "\n")
	}
	const cols, rows = 2, 3
	grid := make([][]*plot.Plot, rows)
	for i, pn := range panels {
		p := plot.New()
		p.Title.Text = pn.title
		p.Y.Label.Text = pn.unit
		p.NominalX(labels...)
		p.Legend.Top = true
		p.Legend.Left = false
		width := vg.Points(12)
		for j, peer := range ps {
			vals := make(plotter.Values, len(cs))
			for k, c := range cs {
				if r := find(recs, peer, c); r != nil {
					vals[k] = pn.value(r)
				}
			}
			bars, err := plotter.NewBarChart(vals, width)
			if err != nil {
				return fmt.Errorf("chart %q: %w", pn.title, err)
			}
			bars.Color = peerColor(peer)
			bars.LineStyle.Width = 0
			bars.Offset = width * vg.Length(float64(j)-float64(len(ps)-1)/2)
			p.Add(bars)
			p.Legend.Add(peer, bars)
		}
		p.Y.Min = 0
		p.Y.Max *= 1.4 // room for the legend
		grid[i/cols] = append(grid[i/cols], p)
	}
	if e2e, err := e2ePanel(recs); err != nil {
		return err
	} else if e2e != nil {
		grid[rows-1] = append(grid[rows-1], e2e)
	}
	for len(grid[rows-1]) < cols {
		grid[rows-1] = append(grid[rows-1], nil) // an empty tile
	}
	w, h := 16*vg.Inch, 14*vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 6,
		PadTop: vg.Millimeter * 4, PadBottom: vg.Millimeter * 4, PadLeft: vg.Millimeter * 4, PadRight: vg.Millimeter * 4}
	canvases := plot.Align(grid, tiles, dc)
	for i := range grid {
		for j, p := range grid[i] {
			if p == nil {
				continue
			}
			p.Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing chart: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("writing chart: %w", err)
	}
	return f.Close()
}

// e2ePanel charts the end-to-end latency percentiles of the first end-to-end record, or
// returns nil when there is none.
func e2ePanel(recs []record) (*plot.Plot, error) {
	var r *record
	for i := range recs {
		if recs[i].Result.E2E != nil {
			r = &recs[i]
			break
		}
	}
	if r == nil {
		return nil, nil
	}
	l := r.Result.E2E.Latency
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: ack → function invocation (%s)", r.Peer, describe(r))
	p.Y.Label.Text = "ms"
	p.NominalX("p50", "p90", "p99", "max")
	bars, err := plotter.NewBarChart(plotter.Values{l.P50, l.P90, l.P99, l.Max}, vg.Points(24))
	if err != nil {
		return nil, fmt.Errorf("chart end to end: %w", err)
	}
	bars.Color = peerColor(r.Peer)
	bars.LineStyle.Width = 0
	p.Add(bars)
	p.Y.Min = 0
	return p, nil
}

func peerColor(peer string) color.Color {
	switch peer {
	case "fleetgate":
		return color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	case "mosquitto":
		return color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	case "nats":
		return color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	case "bare-goroutine":
		return color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}
	case "bare-epoll":
		return color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff}
	default:
		return color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff}
	}
}
