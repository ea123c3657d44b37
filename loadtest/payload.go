package loadtest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"strconv"
)

// tagPrefix starts every message tag: "LT<run>.<stream>.<seq>." where run is a random
// per-run id, stream a client (MQTT) or 0 (HTTP) and seq the message's number in its stream.
// A tag is plain ASCII with no character JSON would escape, so it survives being embedded
// in a CloudEvent's data verbatim or as a JSON string.
const tagPrefix = "LT"

// newRunID returns a random 8-byte hex id that marks one run's messages.
func newRunID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// appendTag appends the tag of (stream, seq) in run to dst.
func appendTag(dst []byte, run string, stream, seq int) []byte {
	dst = append(dst, tagPrefix...)
	dst = append(dst, run...)
	dst = append(dst, '.')
	dst = strconv.AppendInt(dst, int64(stream), 10)
	dst = append(dst, '.')
	dst = strconv.AppendInt(dst, int64(seq), 10)
	return append(dst, '.')
}

// MakePayload returns a JSON object payload of at least size bytes (exactly size when the
// tag fits) carrying the tag of (stream, seq) in run: {"lt":"<tag>","pad":"xxx..."}.
func MakePayload(run string, stream, seq, size int) []byte {
	b := make([]byte, 0, max(size, 64))
	return appendPayload(b, run, stream, seq, size)
}

func appendPayload(b []byte, run string, stream, seq, size int) []byte {
	start := len(b)
	b = append(b, `{"lt":"`...)
	b = appendTag(b, run, stream, seq)
	const tail = `","pad":""}`
	pad := size - (len(b) - start) - len(tail)
	if pad < 0 {
		return append(b, `"}`...)
	}
	b = append(b, `","pad":"`...)
	for range pad {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

// ScanTags calls fn for every well-formed tag of run found in body, in order, and returns
// how many it found. Bytes that merely look like a tag (bad digits, numbers too large,
// another run's id) are skipped. It never panics, whatever body holds.
func ScanTags(body []byte, run string, fn func(stream, seq int)) int {
	marker := make([]byte, 0, len(tagPrefix)+len(run)+1)
	marker = append(append(append(marker, tagPrefix...), run...), '.')
	n := 0
	for {
		i := bytes.Index(body, marker)
		if i < 0 {
			return n
		}
		body = body[i+len(marker):]
		stream, rest, ok := scanNum(body)
		if !ok {
			continue
		}
		seq, rest, ok := scanNum(rest)
		if !ok {
			continue
		}
		body = rest
		n++
		if fn != nil {
			fn(stream, seq)
		}
	}
}

// scanNum reads "<decimal>." from the start of b: at most 9 digits, so the value fits an int
// on every platform.
func scanNum(b []byte) (int, []byte, bool) {
	v, i := 0, 0
	for ; i < len(b) && i < 10; i++ {
		c := b[i]
		if c == '.' {
			break
		}
		if c < '0' || c > '9' {
			return 0, b, false
		}
		v = v*10 + int(c-'0')
	}
	if i == 0 || i > 9 || i >= len(b) || b[i] != '.' {
		return 0, b, false
	}
	return v, b[i+1:], true
}
