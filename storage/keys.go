package storage

import (
	"encoding/binary"
	"strings"
)

// Key layout. Every key starts with a one-byte namespace.
//
//	e <seq:8>                  → <commit unix nanos:8> <encoded event>
//	q <function> 0x00 <seq:8>  → <target value>            pending delivery of event seq to function
//	d <function> 0x00 <seq:8>  → <dead letter value>       dead letter of event seq for function
//	i <idempotency key>        → <seq:8> <event id>        with a TTL
//	k <key>                    → value                     small KV for other packages
//	m seq                      → <seq:8>                   highest sequence number ever assigned
const (
	nsEvent    = 'e'
	nsQueue    = 'q'
	nsDead     = 'd'
	nsIdem     = 'i'
	nsKV       = 'k'
	nsMetaSeq  = "mseq"
	seqKeySize = 8
)

func eventKey(seq uint64) []byte {
	k := make([]byte, 1+seqKeySize)
	k[0] = nsEvent
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

// fnPrefix is the prefix of all keys of a function's queue (ns = nsQueue) or DLQ (ns = nsDead).
func fnPrefix(ns byte, fn string) []byte {
	k := make([]byte, 0, 2+len(fn)+seqKeySize)
	k = append(k, ns)
	k = append(k, fn...)
	return append(k, 0)
}

func fnKey(ns byte, fn string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(fnPrefix(ns, fn), seq)
}

// parseFnKey splits a queue or DLQ key into function and seq.
func parseFnKey(k []byte) (fn string, seq uint64, ok bool) {
	if len(k) < 2+seqKeySize || k[len(k)-seqKeySize-1] != 0 {
		return "", 0, false
	}
	return string(k[1 : len(k)-seqKeySize-1]), binary.BigEndian.Uint64(k[len(k)-seqKeySize:]), true
}

// validFunction reports whether fn may name a queue: non-empty, no NUL byte.
func validFunction(fn string) bool { return fn != "" && !strings.ContainsRune(fn, 0) && len(fn) <= 255 }

// Target values: <rule len uvarint><rule><has data byte><data>.
func encodeTarget(dst []byte, rule string, data []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(rule)))
	dst = append(dst, rule...)
	if data == nil {
		return append(dst, 0)
	}
	dst = append(dst, 1)
	return append(dst, data...)
}

func decodeTarget(v []byte) (rule string, data []byte, ok bool) {
	n, w := binary.Uvarint(v)
	if w <= 0 || uint64(len(v)-w) < n+1 {
		return "", nil, false
	}
	rule = string(v[w : w+int(n)])
	rest := v[w+int(n):]
	if rest[0] == 1 {
		data = append([]byte{}, rest[1:]...)
	}
	return rule, data, true
}
