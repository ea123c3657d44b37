package main

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
		w.Write([]byte("ok"))
	}))
	defer srv.Close()

	if err := check(srv.URL+"/healthz", time.Second, false); err != nil {
		t.Fatalf("healthy server: %v", err)
	}
	status = http.StatusServiceUnavailable
	if err := check(srv.URL+"/healthz", time.Second, false); !errors.Is(err, errUnhealthy) {
		t.Fatalf("503: got %v, want errUnhealthy", err)
	}
	if err := check(srv.URL+"/nope", time.Second, false); !errors.Is(err, errUnhealthy) {
		t.Fatalf("404: got %v, want errUnhealthy", err)
	}
}

func TestCheckTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	if err := check(srv.URL, time.Second, false); err == nil {
		t.Fatal("self-signed certificate accepted without -insecure")
	}
	if err := check(srv.URL, time.Second, true); err != nil {
		t.Fatalf("-insecure: %v", err)
	}
}

func TestCheckRefusedAndTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	if err := check("http://"+addr+"/healthz", time.Second, false); err == nil {
		t.Fatal("closed port reported healthy")
	}

	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer srv.Close()
	defer close(hang)
	start := time.Now()
	if err := check(srv.URL, 200*time.Millisecond, false); err == nil {
		t.Fatal("hanging server reported healthy")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timeout not honoured: took %s", d)
	}
}

func TestRun(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	var stderr bytes.Buffer
	if code := run([]string{"-timeout", "1s", srv.URL}, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	if code := run([]string{"a", "b"}, &stderr); code != 2 || !strings.Contains(stderr.String(), "usage") {
		t.Fatalf("two URLs: exit %d, stderr %q", code, stderr.String())
	}
}
