package event

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"
)

// codecVersion is the first byte of every encoded event.
const codecVersion = 1

// Limits the decoder enforces on untrusted input.
const (
	maxMetaEntries = 1 << 12
)

// ErrCorrupt is returned (wrapped) by Decode for input that is not a valid encoded event.
var ErrCorrupt = errors.New("event: corrupt encoding")

const (
	flagRetain = 1 << 0
)

// AppendBinary appends the compact binary encoding of e to dst and returns the result.
// The encoding is versioned; Claims is carried as ClaimsJSON. Meta keys are written in
// sorted order so that equal events encode to equal bytes.
func (e *Event) AppendBinary(dst []byte) []byte {
	dst = append(dst, codecVersion)
	dst = appendString(dst, e.ID)
	dst = appendString(dst, e.Source)
	dst = appendString(dst, e.Type)
	dst = appendString(dst, e.Subject)
	var t int64
	if !e.Time.IsZero() {
		t = e.Time.UnixNano()
	}
	dst = binary.AppendVarint(dst, t)
	dst = appendString(dst, e.ContentType)
	dst = appendBytes(dst, e.Data)
	dst = appendString(dst, e.Protocol)
	dst = appendString(dst, e.Topic)
	dst = appendString(dst, e.Tenant)
	dst = appendBytes(dst, e.ClaimsJSON)
	dst = binary.AppendUvarint(dst, uint64(len(e.Meta)))
	switch len(e.Meta) {
	case 0:
	case 1:
		for k, v := range e.Meta {
			dst = appendString(dst, k)
			dst = appendString(dst, v)
		}
	default:
		keys := make([]string, 0, len(e.Meta))
		for k := range e.Meta {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			dst = appendString(dst, k)
			dst = appendString(dst, e.Meta[k])
		}
	}
	var flags byte
	if e.Retain {
		flags |= flagRetain
	}
	dst = append(dst, e.QoS, flags, e.Hops)
	return dst
}

// MarshalBinary implements encoding.BinaryMarshaler.
func (e *Event) MarshalBinary() ([]byte, error) { return e.AppendBinary(nil), nil }

// UnmarshalBinary implements encoding.BinaryUnmarshaler; see Decode.
func (e *Event) UnmarshalBinary(b []byte) error { return Decode(b, e) }

// Decode decodes b, produced by AppendBinary, into e, replacing all of its fields.
// Data and ClaimsJSON are copied, so b may be reused afterwards. Any malformed input
// yields an error wrapping ErrCorrupt; Decode never panics.
func Decode(b []byte, e *Event) error {
	d := decoder{b: b}
	if len(b) == 0 {
		return fmt.Errorf("%w: empty", ErrCorrupt)
	}
	if b[0] != codecVersion {
		return fmt.Errorf("%w: unknown version %d", ErrCorrupt, b[0])
	}
	d.b = b[1:]
	*e = Event{}
	e.ID = d.str()
	e.Source = d.str()
	e.Type = d.str()
	e.Subject = d.str()
	if t := d.varint(); t != 0 {
		e.Time = time.Unix(0, t).UTC()
	}
	e.ContentType = d.str()
	e.Data = d.bytes()
	e.Protocol = d.str()
	e.Topic = d.str()
	e.Tenant = d.str()
	e.ClaimsJSON = d.bytes()
	n := d.uvarint()
	if n > maxMetaEntries || n > uint64(len(d.b)) {
		d.fail("meta count")
	}
	if d.err == nil && n > 0 {
		e.Meta = make(map[string]string, n)
		for i := uint64(0); i < n && d.err == nil; i++ {
			k := d.str()
			e.Meta[k] = d.str()
		}
	}
	if d.err == nil && len(d.b) < 3 {
		d.fail("flags")
	}
	if d.err != nil {
		*e = Event{}
		return d.err
	}
	e.QoS, e.Retain, e.Hops = d.b[0], d.b[1]&flagRetain != 0, d.b[2]
	if len(d.b) != 3 {
		*e = Event{}
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.b)-3)
	}
	return nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("length")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("time")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) || n > math.MaxInt32 {
		d.fail("field length")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.raw()) }

func (d *decoder) bytes() []byte {
	v := d.raw()
	if len(v) == 0 {
		return nil
	}
	return append([]byte(nil), v...)
}
