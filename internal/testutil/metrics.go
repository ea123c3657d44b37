package testutil

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// MetricValue reads one series of s ("name{labels}", or a histogram's "name_count") or fails
// the test.
func MetricValue(t testing.TB, s *metrics.Set, series string) float64 {
	t.Helper()
	var buf bytes.Buffer
	s.WritePrometheus(&buf)
	for _, line := range strings.Split(buf.String(), "\n") {
		if name, v, ok := strings.Cut(line, " "); ok && name == series {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no series %s in:\n%s", series, buf.String())
	return 0
}
