package storage

import (
	"encoding/binary"
	"strings"
)

// Key layout. Every key starts with a one-byte namespace.
//
//	e <seq:8>                  → <commit unix nanos:8> <encoded event>   (events with 2+ targets)
//	q <function> 0x00 <seq:8>  → <target value>            pending delivery of event seq to function;
//	                                                       holds the event itself when it has one target
//	d <function> 0x00 <seq:8>  → <dead letter value>       dead letter of event seq for function
//	i <idempotency key>        → <seq:8> <event id>        with a TTL
//	k <key>                    → value                     small KV for other packages
//	f <event id>               → <seq:8> <rule version>    fate index of an id a sender chose, with a TTL (fate.go)
//	a <function> 0x00 <max seq:8> <min seq:8> <nonce:4> → <deliveries>   one per Delivered call, with a TTL (fate.go)
//	o <event id> 0x00 <function> 0x00 <kind> → <outcome>   a dead letter, with a TTL (fate.go)
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
	return appendEventKey(make([]byte, 0, 1+seqKeySize), seq)
}

// appendEventKey appends the key of event seq to dst.
func appendEventKey(dst []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, nsEvent), seq)
}

// fnPrefix is the prefix of all keys of a function's queue (ns = nsQueue) or DLQ (ns = nsDead).
func fnPrefix(ns byte, fn string) []byte {
	return appendFnPrefix(make([]byte, 0, fnKeySize(fn)), ns, fn)
}

func appendFnPrefix(dst []byte, ns byte, fn string) []byte {
	return append(append(append(dst, ns), fn...), 0)
}

func fnKey(ns byte, fn string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(fnPrefix(ns, fn), seq)
}

// appendFnKey appends fnKey(ns, fn, seq) to dst; fnKeySize(fn) bytes.
func appendFnKey(dst []byte, ns byte, fn string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(appendFnPrefix(dst, ns, fn), seq)
}

// fnKeySize is the length of a key of fn's queue or DLQ.
func fnKeySize(fn string) int { return 2 + len(fn) + seqKeySize }

// parseFnKey splits a queue or DLQ key into function and seq.
func parseFnKey(k []byte) (fn string, seq uint64, ok bool) {
	if len(k) < 2+seqKeySize || k[len(k)-seqKeySize-1] != 0 {
		return "", 0, false
	}
	return string(k[1 : len(k)-seqKeySize-1]), binary.BigEndian.Uint64(k[len(k)-seqKeySize:]), true
}

// validFunction reports whether fn may name a queue: non-empty, no NUL byte.
func validFunction(fn string) bool { return fn != "" && !strings.ContainsRune(fn, 0) && len(fn) <= 255 }

// targetSize is at least the length of encodeTarget's output.
func targetSize(rule string, data, inline []byte) int {
	return 3*binary.MaxVarintLen64 + 1 + len(rule) + len(data) + len(inline)
}

// Queue entry values: <rule len uvarint><rule><flags><[rule set version uvarint]>
// <[data len uvarint][data]><[inline event]>. flagVersion: the version of the rule set that
// chose the function follows (entries written before it was kept have none, and decode with
// version 0). flagData: the rule's select output follows. flagInline: the event itself follows
// (its commit time, 8 bytes, then its encoding): an event with a single target is stored only
// there, one Badger entry instead of two.
const (
	flagData    = 1 << 0
	flagInline  = 1 << 1
	flagVersion = 1 << 2
)

func encodeTarget(dst []byte, rule string, version int, data, inline []byte) []byte {
	if dst == nil {
		dst = make([]byte, 0, targetSize(rule, data, inline))
	}
	dst = binary.AppendUvarint(dst, uint64(len(rule)))
	dst = append(dst, rule...)
	var flags byte
	if data != nil {
		flags |= flagData
	}
	if inline != nil {
		flags |= flagInline
	}
	if version > 0 {
		flags |= flagVersion
	}
	dst = append(dst, flags)
	if version > 0 {
		dst = binary.AppendUvarint(dst, uint64(version))
	}
	if data != nil {
		dst = binary.AppendUvarint(dst, uint64(len(data)))
		dst = append(dst, data...)
	}
	return append(dst, inline...)
}

// decodeTarget splits a queue entry value. data and inline alias v.
func decodeTarget(v []byte) (rule string, data, inline []byte, ok bool) {
	rule, _, data, inline, ok = decodeTargetVersion(v)
	return rule, data, inline, ok
}

// decodeTargetVersion is decodeTarget that also returns the rule set version (0: not known).
func decodeTargetVersion(v []byte) (rule string, version int, data, inline []byte, ok bool) {
	n, w := binary.Uvarint(v)
	if w <= 0 || uint64(len(v)-w) < n+1 {
		return "", 0, nil, nil, false
	}
	rule = string(v[w : w+int(n)])
	flags, rest := v[w+int(n)], v[w+int(n)+1:]
	if flags&flagVersion != 0 {
		ver, w := binary.Uvarint(rest)
		if w <= 0 || ver > 1<<31 {
			return "", 0, nil, nil, false
		}
		version, rest = int(ver), rest[w:]
	}
	if flags&flagData != 0 {
		dl, w := binary.Uvarint(rest)
		if w <= 0 || uint64(len(rest)-w) < dl {
			return "", 0, nil, nil, false
		}
		data, rest = rest[w:w+int(dl)], rest[w+int(dl):]
	}
	if flags&flagInline != 0 {
		if len(rest) < 8 {
			return "", 0, nil, nil, false
		}
		inline = rest
	} else if len(rest) != 0 {
		return "", 0, nil, nil, false
	}
	return rule, version, data, inline, true
}
