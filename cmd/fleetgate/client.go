package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// defaultServer is the admin API address used when neither --server nor FLEETGATE_SERVER is set.
const defaultServer = "http://127.0.0.1:8080"

// adminClient calls the gateway's /admin/v1 API with an operator token.
type adminClient struct {
	server string
	token  string
	hc     *http.Client
}

// APIError is a non-2xx answer of the admin API.
type APIError struct {
	Status  int
	Code    string
	Message string
	Body    []byte
}

func (e *APIError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("%s (HTTP %d, %s)", e.Message, e.Status, e.Code)
	}
	return fmt.Sprintf("HTTP %d: %s", e.Status, strings.TrimSpace(string(e.Body)))
}

// addClientFlags registers --server and --token on fs. Call the returned function after fs.Parse
// to get a client; flags win over FLEETGATE_SERVER and FLEETGATE_TOKEN.
func addClientFlags(fs *flag.FlagSet) func() (*adminClient, error) {
	server := fs.String("server", "", "gateway URL (default $FLEETGATE_SERVER or "+defaultServer+")")
	token := fs.String("token", "", "operator token (default $FLEETGATE_TOKEN)")
	return func() (*adminClient, error) {
		c := &adminClient{server: *server, token: *token, hc: &http.Client{Timeout: 30 * time.Second}}
		if c.server == "" {
			c.server = os.Getenv("FLEETGATE_SERVER")
		}
		if c.server == "" {
			c.server = defaultServer
		}
		c.server = strings.TrimRight(c.server, "/")
		if c.token == "" {
			c.token = os.Getenv("FLEETGATE_TOKEN")
		}
		if c.token == "" {
			return nil, errors.New("no operator token: pass --token or set FLEETGATE_TOKEN (mint one with: fleetgate token --subject you --role operator)")
		}
		return c, nil
	}
}

// Do sends method path with reqBody encoded as JSON (nil: no body; []byte: sent as is) and decodes
// a 2xx answer into respOut when it is not nil. A non-2xx answer is an *APIError.
func (c *adminClient) Do(method, path string, reqBody any, respOut any) error {
	var body io.Reader
	contentType := "application/json"
	switch b := reqBody.(type) {
	case nil:
	case []byte:
		body = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			return fmt.Errorf("encoding request: %w", err)
		}
		body = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, c.server+path, body)
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling %s: %w", c.server, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading answer from %s: %w", c.server, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		apiErr := &APIError{Status: resp.StatusCode, Body: data}
		var e struct {
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		if json.Unmarshal(data, &e) == nil {
			apiErr.Message, apiErr.Code = e.Error, e.Code
		}
		return apiErr
	}
	if respOut != nil && len(data) > 0 {
		if raw, ok := respOut.(*json.RawMessage); ok {
			*raw = append((*raw)[:0], data...)
			return nil
		}
		if err := json.Unmarshal(data, respOut); err != nil {
			return fmt.Errorf("decoding answer from %s: %w", c.server, err)
		}
	}
	return nil
}

// parseWithArg parses a subcommand's flags from args, whose one positional argument (an id, a
// node name) may come before or after the flags; it returns that argument ("" when none).
func parseWithArg(fs *flag.FlagSet, args []string) (string, error) {
	var arg string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		arg, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if arg == "" && fs.NArg() > 0 {
		arg = fs.Arg(0)
	}
	return arg, nil
}

// checkOutput reports whether -o names a known format, saying what is wrong on stderr if not.
func checkOutput(cmd, output string, stderr io.Writer) bool {
	if output != "text" && output != "json" {
		fmt.Fprintf(stderr, "%s: -o must be text or json, not %q\n", cmd, output)
		return false
	}
	return true
}
