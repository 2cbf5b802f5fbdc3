package schemas

import (
	"strconv"
	"unicode/utf8"
)

// decodePayloadObject reads a JSON object the way json.Unmarshal into an
// any does (map[string]any of float64, string, bool, nil and nested
// objects), for the payloads devices send: objects nested at most
// maxFastDepth deep, strings without escapes or control characters and in
// valid UTF-8, no arrays. It is every reading's first step, and
// encoding/json's reflection-driven decoding cost 2.2 µs of a reading's
// ~40 µs on the backfill (BenchmarkDecodePayload). Anything else, valid
// JSON or not, gets ok false and is left to encoding/json, so errors and
// rarer shapes read exactly as before (FuzzDecodePayload).
//
// d, if not nil, lends the maps and remembers the keys (PayloadDecoder).
func decodePayloadObject(data []byte, d *PayloadDecoder) (obj map[string]any, ok bool) {
	p := payloadParser{data: data, dec: d}
	p.space()
	obj, ok = p.object(0)
	if !ok {
		return nil, false
	}
	p.space()
	return obj, p.i == len(p.data)
}

const maxFastDepth = 4

type payloadParser struct {
	data []byte
	i    int
	dec  *PayloadDecoder
}

// newMap is an empty map, one of the decoder's if it has one to lend.
func (p *payloadParser) newMap() map[string]any {
	d := p.dec
	if d == nil {
		return make(map[string]any, 4)
	}
	if d.used < len(d.maps) {
		m := d.maps[d.used]
		d.used++
		if len(m) <= maxKeptMapLen {
			clear(m)
			return m
		}
		m = make(map[string]any, 4) // leave a big one to the collector
		d.maps[d.used-1] = m
		return m
	}
	m := make(map[string]any, 4)
	if len(d.maps) < maxKeptMaps {
		d.maps = append(d.maps, m)
		d.used++
	}
	return m
}

// key is an object key read by str as s, the decoder's copy if it has one.
func (p *payloadParser) key(s []byte) string {
	if p.dec == nil {
		return string(s)
	}
	return p.dec.keys.get(s)
}

func (p *payloadParser) space() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *payloadParser) next(c byte) bool {
	p.space()
	if p.i < len(p.data) && p.data[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *payloadParser) object(depth int) (map[string]any, bool) {
	if depth > maxFastDepth || !p.next('{') {
		return nil, false
	}
	obj := p.newMap()
	if p.next('}') {
		return obj, true
	}
	for {
		p.space()
		key, ok := p.str(true)
		if !ok || !p.next(':') {
			return nil, false
		}
		v, ok := p.value(depth)
		if !ok {
			return nil, false
		}
		obj[key] = v // a repeated key keeps its last value, as encoding/json does
		if p.next(',') {
			continue
		}
		return obj, p.next('}')
	}
}

func (p *payloadParser) value(depth int) (any, bool) {
	p.space()
	if p.i >= len(p.data) {
		return nil, false
	}
	switch c := p.data[p.i]; {
	case c == '{':
		return p.object(depth + 1)
	case c == '"':
		return p.str(false)
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	default:
		for _, lit := range [...]struct {
			text string
			v    any
		}{{"true", true}, {"false", false}, {"null", nil}} {
			if len(p.data)-p.i >= len(lit.text) && string(p.data[p.i:p.i+len(lit.text)]) == lit.text {
				p.i += len(lit.text)
				return lit.v, true
			}
		}
		return nil, false
	}
}

// str reads a string without escapes or control characters, in valid UTF-8;
// an object key if isKey.
func (p *payloadParser) str(isKey bool) (string, bool) {
	if p.i >= len(p.data) || p.data[p.i] != '"' {
		return "", false
	}
	start := p.i + 1
	ascii := true
	for j := start; j < len(p.data); j++ {
		switch c := p.data[j]; {
		case c == '"':
			s := p.data[start:j]
			if !ascii && !utf8.Valid(s) {
				return "", false
			}
			p.i = j + 1
			switch string(s) { // the envelope's keys, without an allocation
			case "ts":
				return "ts", true
			case "seq":
				return "seq", true
			case "metrics":
				return "metrics", true
			case "buffered":
				return "buffered", true
			}
			if isKey {
				return p.key(s), true
			}
			return string(s), true
		case c == '\\' || c < 0x20:
			return "", false
		case c >= 0x80:
			ascii = false
		}
	}
	return "", false
}

// number reads a number in JSON's grammar, -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?,
// into a float64 as encoding/json does.
func (p *payloadParser) number() (float64, bool) {
	d, start := p.data, p.i
	j := start
	digits := func() bool {
		k := j
		for j < len(d) && d[j] >= '0' && d[j] <= '9' {
			j++
		}
		return j > k
	}
	if j < len(d) && d[j] == '-' {
		j++
	}
	switch {
	case j < len(d) && d[j] == '0':
		j++
	case !digits():
		return 0, false
	}
	if j < len(d) && d[j] == '.' {
		j++
		if !digits() {
			return 0, false
		}
	}
	if j < len(d) && (d[j] == 'e' || d[j] == 'E') {
		j++
		if j < len(d) && (d[j] == '+' || d[j] == '-') {
			j++
		}
		if !digits() {
			return 0, false
		}
	}
	f, err := strconv.ParseFloat(string(d[start:j]), 64)
	if err != nil { // out of range: encoding/json's error, not ours
		return 0, false
	}
	p.i = j
	return f, true
}
