package schemas

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// ArchiveRecord is one raw message as the GCS archive keeps it, one JSON
// object per line: everything needed to replay the message through the
// pipeline exactly as it first arrived.
//
//	{"id":"m1","publish_ms":1700000000123,"attributes":{"deviceId":"d1",...},"data":"{\"ts\":...}"}
//
// The payload is kept as text in "data" when it is valid UTF-8, otherwise
// base64 in "data_b64".
type ArchiveRecord struct {
	ID            string            `json:"id"`
	PublishMillis int64             `json:"publish_ms"`
	Attributes    map[string]string `json:"attributes,omitempty"`
	Data          *string           `json:"data,omitempty"`
	DataB64       []byte            `json:"data_b64,omitempty"`
}

// MarshalArchive encodes a raw message as an archive line (without newline).
func MarshalArchive(id string, publishMillis int64, attrs map[string]string, data []byte) ([]byte, error) {
	r := ArchiveRecord{ID: id, PublishMillis: publishMillis, Attributes: attrs}
	if utf8.Valid(data) {
		s := string(data)
		r.Data = &s
	} else {
		r.DataB64 = data
	}
	return json.Marshal(r)
}

// ParseArchive decodes an archive line into its record and its payload:
// the text of "data" or the bytes of "data_b64". The record's Data and
// DataB64 are left empty; the payload is the bytes returned, the caller's
// to keep.
func ParseArchive(line []byte) (ArchiveRecord, []byte, error) {
	return (*ArchiveParser)(nil).Parse(line)
}

// ArchiveParser is ParseArchive for line after line: it keeps one copy of
// each attribute key and value it reads, which repeat from one line to the
// next across a fleet, where ParseArchive allocates them for every line.
// A parser is for one goroutine at a time; its zero value is ready to use.
type ArchiveParser struct {
	strs internSet
}

// Parse is ParseArchive.
func (ap *ArchiveParser) Parse(line []byte) (ArchiveRecord, []byte, error) {
	r, data, fast := parseArchiveLine(line, ap)
	if !fast {
		r = ArchiveRecord{}
		if err := json.Unmarshal(line, &r); err != nil {
			return r, nil, fmt.Errorf("archive line is not a JSON record: %w", err)
		}
	}
	if r.ID == "" {
		return r, nil, fmt.Errorf("archive record has no \"id\"")
	}
	if r.PublishMillis <= 0 {
		return r, nil, fmt.Errorf("archive record %s has no \"publish_ms\"", r.ID)
	}
	if fast {
		return r, data, nil
	}
	switch {
	case r.Data != nil && r.DataB64 != nil:
		return r, nil, fmt.Errorf("archive record %s has both \"data\" and \"data_b64\"", r.ID)
	case r.Data != nil:
		data = []byte(*r.Data)
	case r.DataB64 != nil:
		data = r.DataB64
	default:
		return r, nil, fmt.Errorf("archive record %s has no payload", r.ID)
	}
	r.Data, r.DataB64 = nil, nil
	return r, data, nil
}

// parseArchiveLine reads a line exactly as MarshalArchive writes a text
// payload: {"id":...,"publish_ms":...,"attributes":{...},"data":"..."}, in
// that order, with no whitespace, strings without \u escapes and in valid
// UTF-8. It is the backfill's first step for every event, and encoding/json
// takes 3 µs and 23 allocations a line for it (BenchmarkParseArchive). Any
// other line, valid JSON or not, gets ok false and is left to encoding/json,
// whose result this one equals wherever it answers (FuzzParseArchive).
func parseArchiveLine(line []byte, ap *ArchiveParser) (r ArchiveRecord, data []byte, ok bool) {
	p := archiveParser{b: line}
	var strs *internSet
	if ap != nil {
		strs = &ap.strs
	}
	if !p.literal(`{"id":`) {
		return r, nil, false
	}
	id, _, ok := p.bytes()
	if !ok {
		return r, nil, false
	}
	r.ID = string(id)
	if !p.literal(`,"publish_ms":`) {
		return r, nil, false
	}
	if r.PublishMillis, ok = p.uint(); !ok {
		return r, nil, false
	}
	if p.literal(`,"attributes":{`) {
		r.Attributes = map[string]string{}
		for first := true; !p.literal("}"); first = false {
			if !first && !p.literal(",") {
				return r, nil, false
			}
			k, _, ok := p.bytes()
			if !ok || !p.literal(":") {
				return r, nil, false
			}
			v, _, ok := p.bytes()
			if !ok {
				return r, nil, false
			}
			r.Attributes[strs.get(k)] = strs.get(v)
		}
	}
	if !p.literal(`,"data":`) {
		return r, nil, false
	}
	data, inLine, ok := p.bytes()
	if !ok || !p.literal("}") || len(p.b) != 0 {
		return r, nil, false
	}
	if inLine {
		data = append([]byte{}, data...) // the caller keeps the payload, not the line
	}
	return r, data, true
}

// archiveParser consumes the front of b.
type archiveParser struct{ b []byte }

func (p *archiveParser) literal(s string) bool {
	if len(p.b) < len(s) || string(p.b[:len(s)]) != s {
		return false
	}
	p.b = p.b[len(s):]
	return true
}

// uint reads a JSON number that is a whole number of at most 18 digits.
func (p *archiveParser) uint() (int64, bool) {
	n, i := int64(0), 0
	for ; i < len(p.b) && i < 19 && p.b[i] >= '0' && p.b[i] <= '9'; i++ {
		n = n*10 + int64(p.b[i]-'0')
	}
	if i == 0 || i > 18 || (i > 1 && p.b[0] == '0') || (i < len(p.b) && (p.b[i] == '.' || p.b[i] == 'e' || p.b[i] == 'E')) {
		return 0, false
	}
	p.b = p.b[i:]
	return n, true
}

// bytes reads a JSON string in valid UTF-8 whose escapes are the one-letter
// ones (\u is left to encoding/json): the bytes between the quotes, inLine,
// if it has no escapes, else a new slice with the escapes undone.
func (p *archiveParser) bytes() (s []byte, inLine, ok bool) {
	if len(p.b) == 0 || p.b[0] != '"' {
		return nil, false, false
	}
	b := p.b[1:]
	end := 0
	escaped := false
	for ; end < len(b) && b[end] != '"'; end++ {
		switch c := b[end]; {
		case c < 0x20:
			return nil, false, false
		case c == '\\':
			escaped = true
			end++ // the escaped byte, checked below
		}
	}
	if end >= len(b) || !utf8.Valid(b[:end]) {
		return nil, false, false
	}
	raw := b[:end]
	p.b = b[end+1:]
	if !escaped {
		return raw, true, true
	}
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		switch raw[i] {
		case '"', '\\', '/':
			out = append(out, raw[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		default: // \u, or not an escape at all
			return nil, false, false
		}
	}
	return out, false, true
}
