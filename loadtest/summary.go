package loadtest

import (
	"fmt"
	"strings"
)

// Summary renders a run's result (*MQTTResult, *HTTPResult, *ConnsResult or *FsyncResult) as a few lines for people.
func Summary(res any) string {
	var b strings.Builder
	lat := func(name string, l Latency) {
		fmt.Fprintf(&b, "%-18s p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms  (n=%d)\n",
			name, l.P50, l.P90, l.P99, l.P999, l.Max, l.Count)
	}
	e2e := func(e *E2E) {
		if e == nil {
			return
		}
		fmt.Fprintf(&b, "end-to-end         expected %d  received %d  lost %d  duplicates %d  unacked-delivered %d  batches %d (mean %.1f)\n",
			e.Expected, e.Received, e.Lost, e.Duplicates, e.UnackedDelivered, e.Batches, e.MeanBatch)
		lat("ack→invocation", e.Latency)
	}
	switch r := res.(type) {
	case *FsyncResult:
		fmt.Fprintf(&b, "fsync %s  append of %d bytes + fdatasync, %d times in %.2fs\n", r.Dir, r.Size, r.Latency.Count, r.Seconds)
		lat("fdatasync", r.Latency)
		if r.BusyLatency != nil {
			lat(fmt.Sprintf("%d core(s) busy", r.BusyCores), *r.BusyLatency)
		}
	case *MQTTResult:
		fmt.Fprintf(&b, "mqtt %s  clients %d  qos %d  size %d  inflight %d\n", r.Broker, r.Clients, r.QoS, r.Size, r.Inflight)
		fmt.Fprintf(&b, "sent %d  acked %d  errors %d  in %.2fs  →  %.0f msgs/s  (connect %.2fs)\n",
			r.Sent, r.Acked, r.Errors, r.Seconds, r.MsgsPerSec, r.ConnectSeconds)
		lat("ack latency", r.AckLatency)
		if r.SendLag != nil {
			lat("send lag", *r.SendLag)
		}
		e2e(r.E2E)
		if r.FirstError != "" {
			fmt.Fprintf(&b, "first error: %s\n", r.FirstError)
		}
	case *HTTPResult:
		fmt.Fprintf(&b, "http %s  concurrency %d  batch %d  size %d\n", r.URL, r.Concurrency, r.Batch, r.Size)
		fmt.Fprintf(&b, "sent %d  acked %d  errors %d  requests %d (%d failed)  in %.2fs  →  %.0f events/s\n",
			r.Sent, r.Acked, r.Errors, r.Requests, r.RequestErrors, r.Seconds, r.EventsPerSec)
		lat("request latency", r.AckLatency)
		e2e(r.E2E)
		if r.FirstError != "" {
			fmt.Fprintf(&b, "first error: %s\n", r.FirstError)
		}
	case *ConnsResult:
		fmt.Fprintf(&b, "conns %s  clients %d  connected %d  errors %d  (connect %.2fs, hold %.2fs)\n",
			r.Broker, r.Clients, r.Connected, r.Errors, r.ConnectSeconds, r.HoldSeconds)
		if r.Before != nil && r.After != nil {
			fmt.Fprintf(&b, "per connection: RSS %.0f B  Go heap %.0f B  stacks %.0f B  goroutines %.2f\n",
				r.RSSPerConn, r.HeapPerConn, r.StackPerConn, r.GoroutinesPerConn)
		}
		if r.FirstError != "" {
			fmt.Fprintf(&b, "first error: %s\n", r.FirstError)
		}
	default:
		fmt.Fprintf(&b, "%v\n", res)
	}
	return b.String()
}
