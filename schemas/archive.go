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

// ParseArchive decodes an archive line.
func ParseArchive(line []byte) (ArchiveRecord, []byte, error) {
	var r ArchiveRecord
	if err := json.Unmarshal(line, &r); err != nil {
		return r, nil, fmt.Errorf("archive line is not a JSON record: %w", err)
	}
	if r.ID == "" {
		return r, nil, fmt.Errorf("archive record has no \"id\"")
	}
	if r.PublishMillis <= 0 {
		return r, nil, fmt.Errorf("archive record %s has no \"publish_ms\"", r.ID)
	}
	switch {
	case r.Data != nil && r.DataB64 != nil:
		return r, nil, fmt.Errorf("archive record %s has both \"data\" and \"data_b64\"", r.ID)
	case r.Data != nil:
		return r, []byte(*r.Data), nil
	case r.DataB64 != nil:
		return r, r.DataB64, nil
	}
	return r, nil, fmt.Errorf("archive record %s has no payload", r.ID)
}
