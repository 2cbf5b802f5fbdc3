package schemas

import (
	"bytes"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// sameEvent is reflect.DeepEqual with metric values compared by their bits,
// so NaN equals itself and -0 differs from 0.
func sameEvent(a, b Event) bool {
	am, bm := a.Metrics, b.Metrics
	a.Metrics, b.Metrics = nil, nil
	if !reflect.DeepEqual(a, b) || (am == nil) != (bm == nil) || len(am) != len(bm) {
		return false
	}
	am, bm = slices.Clone(am), slices.Clone(bm)
	am.sort()
	bm.sort()
	for i := range am {
		if am[i].Name != bm[i].Name || math.Float64bits(am[i].Value) != math.Float64bits(bm[i].Value) {
			return false
		}
	}
	return true
}

func TestEventBinaryRoundTrip(t *testing.T) {
	full := Event{
		DeviceID: "dev-0001", Registry: "reg", Location: "europe-west1", Project: "proj", SubFolder: "sf/x",
		MessageID: "m-1", TS: 1_700_000_000_000, Seq: 42, Metrics: MetricsOf(map[string]float64{"temperature": 21.5, "humidity": 40}),
		Buffered: true, PublishMillis: 1_700_000_000_123, DeviceClass: "thermostat", SchemaID: "iotpipe:telemetry/thermostat/1.1",
		Enrichment: Enrichment{Known: true, Site: "site", Location: "hall", Owner: "ops"}, AckID: "ack-1",
	}
	many := map[string]float64{}
	for i := range 40 {
		many[strings.Repeat("m", i)] = float64(i)
	}
	tests := []struct {
		name string
		e    Event
	}{
		{"zero", Event{}},
		{"full", full},
		{"nil metrics", Event{DeviceID: "d", Metrics: nil}},
		{"empty metrics", Event{DeviceID: "d", Metrics: MetricsOf(map[string]float64{})}},
		{"empty metric name", Event{Metrics: MetricsOf(map[string]float64{"": 1})}},
		{"big numbers", Event{TS: math.MaxInt64, Seq: math.MaxInt64, PublishMillis: math.MinInt64}},
		{"negative numbers", Event{TS: -1, Seq: -(1 << 53), PublishMillis: -1}},
		{"special floats", Event{Metrics: MetricsOf(map[string]float64{
			"nan": math.NaN(), "nan payload": math.Float64frombits(0x7ff8_dead_beef_0001), "+inf": math.Inf(1), "-inf": math.Inf(-1),
			"-0": math.Copysign(0, -1), "max": math.MaxFloat64, "tiny": 5e-324,
		})}},
		{"many metrics", Event{Metrics: MetricsOf(many)}},
		{"metrics built out of order", Event{Metrics: Metrics{{"b", 2}, {"a", 1}}}},
		{"unicode and binary strings", Event{DeviceID: "dév-ü", AckID: "\x00\xff", Enrichment: Enrichment{Owner: strings.Repeat("o", 300)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := AppendEventBinary(nil, tt.e)
			got, err := DecodeEventBinary(b)
			if err != nil {
				t.Fatalf("DecodeEventBinary: %v", err)
			}
			if !sameEvent(got, tt.e) {
				t.Errorf("round trip\n got %#v\nwant %#v", got, tt.e)
			}
			// Map order must not show: the same event encodes the same.
			for range 5 {
				if again := AppendEventBinary(nil, tt.e); !bytes.Equal(again, b) {
					t.Fatalf("encodings differ:\n%x\n%x", b, again)
				}
			}
			// Appending keeps what the buffer held.
			if pre := AppendEventBinary([]byte("xyz"), tt.e); !bytes.Equal(pre, append([]byte("xyz"), b...)) {
				t.Errorf("AppendEventBinary overwrote its buffer")
			}
		})
	}
}

// TestEventBinaryCoversEveryField sets each field of Event, one at a time,
// and expects it back: a field added to Event without a coder change fails here.
func TestEventBinaryCoversEveryField(t *testing.T) {
	var walk func(st reflect.Type, index []int, path string)
	walk = func(st reflect.Type, index []int, path string) {
		for i := range st.NumField() {
			f := st.Field(i)
			idx := append(slices.Clone(index), i)
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx, path+f.Name+".")
				continue
			}
			var e Event
			target := reflect.ValueOf(&e).Elem().FieldByIndex(idx)
			switch target.Kind() {
			case reflect.String:
				target.SetString("x")
			case reflect.Int64:
				target.SetInt(-7)
			case reflect.Bool:
				target.SetBool(true)
			case reflect.Slice:
				target.Set(reflect.ValueOf(Metrics{{"m", 1}}))
			default:
				t.Errorf("field %s%s is a %v: teach AppendEventBinary and this test about it", path, f.Name, target.Kind())
				continue
			}
			got, err := DecodeEventBinary(AppendEventBinary(nil, e))
			if err != nil || !sameEvent(got, e) {
				t.Errorf("field %s%s does not round-trip: got %+v (%v), want %+v", path, f.Name, got, err, e)
			}
		}
	}
	walk(reflect.TypeOf(Event{}), nil, "")
}

func TestDecodeEventBinaryRefusesDamage(t *testing.T) {
	good := AppendEventBinary(nil, Event{DeviceID: "d", TS: 1, Metrics: MetricsOf(map[string]float64{"a": 1, "b": 2})})
	for n := range len(good) {
		if _, err := DecodeEventBinary(good[:n]); err == nil {
			t.Errorf("decoded the first %d of %d bytes", n, len(good))
		}
	}
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"trailing byte", append(append([]byte(nil), good...), 0), "bytes after the event"},
		{"version", append([]byte{2}, good[1:]...), "version 2"},
		{"flags", append([]byte{1, 0x80}, good[2:]...), "unknown flags"},
		{"huge metric count", func() []byte {
			b := AppendEventBinary(nil, Event{})
			return append(b[:len(b)-1], 0xff, 0xff, 0xff, 0xff, 0x0f) // the count is the last byte
		}(), "metrics in"},
		{"metrics without map", func() []byte {
			b := bytes.Clone(good)
			b[1] &^= flagMetrics
			return b
		}(), "without metrics"},
		{"repeated metric", func() []byte {
			b := AppendEventBinary(nil, Event{Metrics: MetricsOf(map[string]float64{"a": 1, "b": 2})})
			i := bytes.LastIndexByte(b, 'b')
			b[i] = 'a'
			return b
		}(), "repeat"},
		{"metrics out of order", func() []byte {
			b := AppendEventBinary(nil, Event{Metrics: MetricsOf(map[string]float64{"a": 1, "b": 2})})
			i, j := bytes.LastIndexByte(b, 'a'), bytes.LastIndexByte(b, 'b')
			b[i], b[j] = 'b', 'a'
			return b
		}(), "out of order"},
		{"varint overflow", append(append([]byte{1, 0}, bytes.Repeat([]byte{0xff}, 10)...), 0x7f), "overflows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeEventBinary(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("DecodeEventBinary(%x) = %v, want an error containing %q", tt.data, err, tt.wantErr)
			}
		})
	}
}

// FuzzDecodeEventBinary: any bytes decode or fail cleanly, and what decodes
// encodes to a form that decodes to the same event.
func FuzzDecodeEventBinary(f *testing.F) {
	f.Add(AppendEventBinary(nil, Event{}))
	f.Add(AppendEventBinary(nil, Event{DeviceID: "d", TS: 1, Seq: -1, Metrics: MetricsOf(map[string]float64{"a": math.NaN(), "": 0}), Enrichment: Enrichment{Known: true}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEventBinary(data)
		if err != nil {
			return
		}
		again, err := DecodeEventBinary(AppendEventBinary(nil, e))
		if err != nil || !sameEvent(again, e) {
			t.Fatalf("%x decoded to %+v, which re-encodes to %+v (%v)", data, e, again, err)
		}
	})
}

func BenchmarkEventBinary(b *testing.B) {
	e := Event{
		DeviceID: "dev-0001", Registry: "r", Location: "l", Project: "p", MessageID: "m123456",
		TS: 1_700_000_000_000, Seq: 123456, Metrics: MetricsOf(map[string]float64{"temperature": 21.5, "humidity": 40, "battery": 3.05}),
		PublishMillis: 1_700_000_000_123, DeviceClass: "generic", SchemaID: "iotpipe:telemetry/generic/1.0",
	}
	data := AppendEventBinary(nil, e)
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			AppendEventBinary(nil, e)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeEventBinary(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
