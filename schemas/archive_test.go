package schemas

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestArchiveRoundTrip(t *testing.T) {
	for _, data := range [][]byte{[]byte(`{"ts":1,"seq":1,"metrics":{"t":1}}`), {0xff, 0x00, 0xfe}, []byte("")} {
		line, err := MarshalArchive("m1", 1700000000123, map[string]string{AttrDeviceID: "d1"}, data)
		if err != nil {
			t.Fatal(err)
		}
		r, got, err := ParseArchive(line)
		if err != nil {
			t.Fatalf("ParseArchive(%s): %v", line, err)
		}
		if !bytes.Equal(got, data) || r.ID != "m1" || r.PublishMillis != 1700000000123 || r.Attributes[AttrDeviceID] != "d1" {
			t.Errorf("round trip of %q via %s = %+v %q", data, line, r, got)
		}
	}
}

func TestParseArchiveRejects(t *testing.T) {
	for line, want := range map[string]string{
		`not json`:                    "not a JSON record",
		`{"publish_ms":1,"data":"x"}`: `no "id"`,
		`{"id":"m","data":"x"}`:       `no "publish_ms"`,
		`{"id":"m","publish_ms":1}`:   "no payload",
		`{"id":"m","publish_ms":1,"data":"x","data_b64":"eA=="}`: "both",
	} {
		if _, _, err := ParseArchive([]byte(line)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseArchive(%s) error = %v, want one containing %q", line, err, want)
		}
	}
}

// BenchmarkParseArchive reads back one archived message: the first step of
// every event of a backfill.
func BenchmarkParseArchive(b *testing.B) {
	line, err := MarshalArchive("m123456", 1700000000123,
		map[string]string{AttrDeviceID: "dev-0001", AttrRegistryID: "r", AttrRegistryRegion: "l", AttrProjectID: "p"},
		[]byte(`{"ts":1700000000000,"seq":12,"metrics":{"temperature":21.5,"humidity":44,"battery":3.12}}`))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("once", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := ParseArchive(line); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parser", func(b *testing.B) {
		var ap ArchiveParser
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := ap.Parse(line); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// archiveSamples are FuzzParseArchive's seed lines, which an ArchiveParser
// reads before each input.
var archiveSamples [][]byte

// FuzzParseArchive: wherever the hand-written reader of archive lines
// answers, encoding/json reads the same record from the line; and a record
// MarshalArchive wrote reads back as it was.
func FuzzParseArchive(f *testing.F) {
	for _, c := range []struct {
		id    string
		attrs map[string]string
		data  string
	}{
		{"m1", map[string]string{AttrDeviceID: "d1", AttrRegistryID: "r"}, `{"ts":1,"seq":2,"metrics":{"t":21.5}}`},
		{"m\"2\\", nil, "line\nbreak\ttab \"quoted\" /slash/"},
		{"m3", map[string]string{}, "<html> & 'quotes' é ✓ \u2028"},
		{"m4", map[string]string{"k": ""}, ""},
		{"m5", map[string]string{"a": "1"}, "\xff\x00 not utf-8"},
	} {
		line, err := MarshalArchive(c.id, 1700000000123, c.attrs, []byte(c.data))
		if err != nil {
			f.Fatal(err)
		}
		archiveSamples = append(archiveSamples, line)
	}
	for _, line := range archiveSamples {
		f.Add(line)
	}
	f.Add([]byte(`{"id":"m","publish_ms":01,"data":"x"}`))
	f.Add([]byte(`{"id":"m","publish_ms":1.5,"data":"x"}`))
	f.Add([]byte(`{"id":"m","publish_ms":1,"attributes":{"a":"b",},"data":"x"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		got, payload, ok := parseArchiveLine(line, nil)
		if ok {
			text := string(payload)
			got.Data = &text
			var want ArchiveRecord
			if err := json.Unmarshal(line, &want); err != nil {
				t.Fatalf("parseArchiveLine read %q, which encoding/json refuses: %v", line, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("parseArchiveLine(%q) = %+v, encoding/json %+v", line, got, want)
			}
		}
		// Whatever the line, a record written from what was read reads back the
		// same; and a parser that read other lines before reads it as
		// ParseArchive does.
		r, data, err := ParseArchive(line)
		var ap ArchiveParser
		for _, other := range archiveSamples {
			ap.Parse(other)
		}
		if r3, data3, err3 := ap.Parse(line); (err3 == nil) != (err == nil) || !reflect.DeepEqual(r3, r) || !bytes.Equal(data3, data) {
			t.Fatalf("ArchiveParser.Parse(%q) after others = %+v %q (%v); ParseArchive gives %+v %q (%v)", line, r3, data3, err3, r, data, err)
		}
		if err != nil {
			return
		}
		again, err := MarshalArchive(r.ID, r.PublishMillis, r.Attributes, data)
		if err != nil {
			t.Fatal(err)
		}
		r2, data2, err := ParseArchive(again)
		if err != nil || r2.ID != r.ID || r2.PublishMillis != r.PublishMillis || !bytes.Equal(data2, data) ||
			(len(r.Attributes) > 0 || len(r2.Attributes) > 0) && !reflect.DeepEqual(r2.Attributes, r.Attributes) {
			t.Fatalf("%q read back as %+v %q (%v), want %+v %q", again, r2, data2, err, r, data)
		}
	})
}
