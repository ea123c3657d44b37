// Command fleetgate-healthcheck is the container image's HEALTHCHECK: it GETs a URL (by default
// the gateway's /healthz on loopback) and exits 0 on a 2xx answer, 1 otherwise. The distroless
// base image has no curl or wget, so the image carries this small static binary instead.
//
//	fleetgate-healthcheck [-timeout 2s] [-insecure] [URL]
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// defaultURL is the gateway's liveness endpoint with the image's default http.addr.
const defaultURL = "http://127.0.0.1:8080/healthz"

// errUnhealthy is returned when the endpoint answers with a status other than 2xx.
var errUnhealthy = errors.New("unhealthy")

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleetgate-healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	insecure := fs.Bool("insecure", false, "do not verify the server's TLS certificate (https URLs on loopback)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	url := defaultURL
	switch fs.NArg() {
	case 0:
	case 1:
		url = fs.Arg(0)
	default:
		fmt.Fprintln(stderr, "usage: fleetgate-healthcheck [-timeout 2s] [-insecure] [URL]")
		return 2
	}
	if err := check(url, *timeout, *insecure); err != nil {
		fmt.Fprintln(stderr, "fleetgate-healthcheck:", err)
		return 1
	}
	return 0
}

// check GETs url and returns nil when the answer is 2xx.
func check(url string, timeout time.Duration, insecure bool) error {
	tr := &http.Transport{DisableKeepAlives: true}
	if insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // loopback probe of our own server, by request
	}
	c := &http.Client{Timeout: timeout, Transport: tr}
	resp, err := c.Get(url)
	if err != nil {
		return fmt.Errorf("checking %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("checking %s: %w: HTTP %d", url, errUnhealthy, resp.StatusCode)
	}
	return nil
}
