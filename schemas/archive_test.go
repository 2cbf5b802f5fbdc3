package schemas

import (
	"bytes"
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
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ParseArchive(line); err != nil {
			b.Fatal(err)
		}
	}
}
