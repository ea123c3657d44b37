package rules

import (
	"errors"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// maxPayloadDepth bounds nesting in a payload, as encoding/json does.
const maxPayloadDepth = 10000

var errBadJSON = errors.New("invalid JSON")

// parsePayload decodes a JSON document into the values encoding/json gives an `any`
// (map[string]any, []any, float64, string, bool, nil), about twice as fast: rules parse the
// payload of most events. It accepts exactly what json.Unmarshal accepts (a fuzz test checks).
func parsePayload(data []byte) (any, error) {
	p := payloadParser{data: data}
	p.ws()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.pos != len(p.data) {
		return nil, errBadJSON
	}
	return v, nil
}

type payloadParser struct {
	data []byte
	pos  int
	buf  []byte
}

func (p *payloadParser) ws() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *payloadParser) value(depth int) (any, error) {
	if p.pos >= len(p.data) {
		return nil, errBadJSON
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		if depth >= maxPayloadDepth {
			return nil, errBadJSON
		}
		return p.object(depth + 1)
	case c == '[':
		if depth >= maxPayloadDepth {
			return nil, errBadJSON
		}
		return p.array(depth + 1)
	case c == '"':
		return p.str()
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	case c == 't':
		return true, p.literal("true")
	case c == 'f':
		return false, p.literal("false")
	case c == 'n':
		return nil, p.literal("null")
	}
	return nil, errBadJSON
}

func (p *payloadParser) literal(s string) error {
	if len(p.data)-p.pos < len(s) || string(p.data[p.pos:p.pos+len(s)]) != s {
		return errBadJSON
	}
	p.pos += len(s)
	return nil
}

func (p *payloadParser) object(depth int) (any, error) {
	p.pos++ // '{'
	m := make(map[string]any)
	p.ws()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return m, nil
	}
	for {
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, errBadJSON
		}
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		p.ws()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return nil, errBadJSON
		}
		p.pos++
		p.ws()
		v, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		m[k] = v
		p.ws()
		if p.pos >= len(p.data) {
			return nil, errBadJSON
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
			p.ws()
		case '}':
			p.pos++
			return m, nil
		default:
			return nil, errBadJSON
		}
	}
}

func (p *payloadParser) array(depth int) (any, error) {
	p.pos++ // '['
	a := []any{}
	p.ws()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return a, nil
	}
	for {
		v, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		p.ws()
		if p.pos >= len(p.data) {
			return nil, errBadJSON
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
			p.ws()
		case ']':
			p.pos++
			return a, nil
		default:
			return nil, errBadJSON
		}
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (p *payloadParser) number() (any, error) {
	start := p.pos
	d := p.data
	if d[p.pos] == '-' {
		p.pos++
	}
	switch {
	case p.pos < len(d) && d[p.pos] == '0':
		p.pos++
	case p.pos < len(d) && d[p.pos] >= '1' && d[p.pos] <= '9':
		for p.pos < len(d) && isDigit(d[p.pos]) {
			p.pos++
		}
	default:
		return nil, errBadJSON
	}
	if p.pos < len(d) && d[p.pos] == '.' {
		p.pos++
		if p.pos >= len(d) || !isDigit(d[p.pos]) {
			return nil, errBadJSON
		}
		for p.pos < len(d) && isDigit(d[p.pos]) {
			p.pos++
		}
	}
	if p.pos < len(d) && (d[p.pos] == 'e' || d[p.pos] == 'E') {
		p.pos++
		if p.pos < len(d) && (d[p.pos] == '+' || d[p.pos] == '-') {
			p.pos++
		}
		if p.pos >= len(d) || !isDigit(d[p.pos]) {
			return nil, errBadJSON
		}
		for p.pos < len(d) && isDigit(d[p.pos]) {
			p.pos++
		}
	}
	f, err := strconv.ParseFloat(string(d[start:p.pos]), 64)
	if err != nil {
		return nil, errBadJSON // out of range, as json.Unmarshal into any
	}
	return f, nil
}

// str decodes a string at p.pos (which is '"') the way encoding/json does: invalid UTF-8
// and lone surrogates become U+FFFD, control characters are errors.
func (p *payloadParser) str() (string, error) {
	d := p.data
	p.pos++
	start := p.pos
	// Fast path: no escapes, ASCII or valid UTF-8 only.
	for p.pos < len(d) {
		c := d[p.pos]
		if c == '"' {
			s := string(d[start:p.pos])
			p.pos++
			return s, nil
		}
		if c == '\\' || c < ' ' || c >= utf8.RuneSelf {
			break
		}
		p.pos++
	}
	b := append(p.buf[:0], d[start:p.pos]...)
	for p.pos < len(d) {
		c := d[p.pos]
		switch {
		case c == '"':
			p.pos++
			p.buf = b
			return string(b), nil
		case c < ' ':
			return "", errBadJSON
		case c == '\\':
			p.pos++
			if p.pos >= len(d) {
				return "", errBadJSON
			}
			switch e := d[p.pos]; e {
			case '"', '\\', '/':
				b = append(b, e)
				p.pos++
			case 'b':
				b = append(b, '\b')
				p.pos++
			case 'f':
				b = append(b, '\f')
				p.pos++
			case 'n':
				b = append(b, '\n')
				p.pos++
			case 'r':
				b = append(b, '\r')
				p.pos++
			case 't':
				b = append(b, '\t')
				p.pos++
			case 'u':
				r := p.hex4(p.pos + 1)
				if r < 0 {
					return "", errBadJSON
				}
				p.pos += 5
				if utf16.IsSurrogate(r) {
					if p.pos+1 < len(d) && d[p.pos] == '\\' && d[p.pos+1] == 'u' {
						if r2 := p.hex4(p.pos + 2); r2 >= 0 {
							if dec := utf16.DecodeRune(r, r2); dec != unicode.ReplacementChar {
								p.pos += 6
								b = utf8.AppendRune(b, dec)
								continue
							}
						}
					}
					r = unicode.ReplacementChar
				}
				b = utf8.AppendRune(b, r)
			default:
				return "", errBadJSON
			}
		case c < utf8.RuneSelf:
			b = append(b, c)
			p.pos++
		default:
			r, size := utf8.DecodeRune(d[p.pos:])
			if r == utf8.RuneError && size == 1 {
				b = utf8.AppendRune(b, unicode.ReplacementChar)
			} else {
				b = append(b, d[p.pos:p.pos+size]...)
			}
			p.pos += size
		}
	}
	return "", errBadJSON
}

// hex4 decodes four hex digits at i, or returns -1.
func (p *payloadParser) hex4(i int) rune {
	if i+4 > len(p.data) {
		return -1
	}
	var r rune
	for _, c := range p.data[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}
