package functions

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// logInvoker writes one JSON line per event: id, time, topic, subject, tenant, source, rule
// and data (inline when it is valid JSON, else data_base64).
type logInvoker struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

var _ Invoker = (*logInvoker)(nil)

func newLogInvoker(_ Definition, env Env) (Invoker, error) {
	w := env.LogWriter
	if w == nil {
		w = os.Stdout
	}
	return &logInvoker{w: w}, nil
}

func (l *logInvoker) Invoke(ctx context.Context, b *Batch) (Result, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	buf := l.buf[:0]
	for i := range b.Items {
		it := &b.Items[i]
		e := it.Event
		buf = append(buf, `{"id":`...)
		buf = appendJSONString(buf, e.ID)
		buf = append(buf, `,"time":"`...)
		buf = e.Time.UTC().AppendFormat(buf, time.RFC3339Nano)
		buf = append(buf, `","topic":`...)
		buf = appendJSONString(buf, e.Topic)
		buf = append(buf, `,"subject":`...)
		buf = appendJSONString(buf, e.Subject)
		buf = append(buf, `,"tenant":`...)
		buf = appendJSONString(buf, e.Tenant)
		buf = append(buf, `,"source":`...)
		buf = appendJSONString(buf, e.Source)
		buf = append(buf, `,"rule":`...)
		buf = appendJSONString(buf, it.Rule)
		data := it.Data
		if data == nil {
			data = e.Data
		}
		if len(data) > 0 && json.Valid(data) {
			buf = append(buf, `,"data":`...)
			buf = appendCompactJSON(buf, data)
		} else {
			buf = append(buf, `,"data_base64":"`...)
			buf = base64.StdEncoding.AppendEncode(buf, data)
			buf = append(buf, '"')
		}
		buf = append(buf, "}\n"...)
	}
	l.buf = buf
	if _, err := l.w.Write(buf); err != nil {
		return Result{}, fmt.Errorf("%w: writing log: %v", ErrRetryable, err)
	}
	return Result{}, nil
}

// appendCompactJSON appends valid JSON without insignificant whitespace (one line per event).
func appendCompactJSON(dst, src []byte) []byte {
	inStr, esc := false, false
	for _, c := range src {
		if inStr {
			dst = append(dst, c)
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '"':
			inStr = true
		}
		dst = append(dst, c)
	}
	return dst
}
