package httpbridge

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func msgpackOf(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gzipOf(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Hand-made MessagePack, for what the encoder will not produce.
func raw(b ...byte) []byte { return b }

func TestDecodeIngest(t *testing.T) {
	ts := time.UnixMilli(1700000000123).UTC()
	tests := []struct {
		name, contentType, encoding string
		body                        []byte
		want                        string // the payload; "" when refused
		wantErr                     error
		reason                      string
	}{
		{name: "JSON is made canonical", contentType: "application/json",
			body: []byte(` {"ts":1700000000000, "seq":3, "metrics":{"b":1.50,"a":-0.0,"c":1e2,"d":"<&>"}, "buffered":true} `),
			want: `{"buffered":true,"metrics":{"a":0,"b":1.5,"c":100,"d":"<&>"},"seq":3,"ts":1700000000000}`},
		{name: "JSON integers beyond int64", contentType: "application/json",
			body: []byte(`{"u":18446744073709551615,"big":1e400}`), wantErr: errBadBody, reason: "float64's range"},
		{name: "JSON uint64", contentType: "application/json", body: []byte(`{"u":18446744073709551615}`), want: `{"u":18446744073709551615}`},
		{name: "NDJSON", contentType: "application/x-ndjson", body: []byte("\n{\"a\":1}\r\n"), want: `{"a":1}`},
		{name: "gzip", contentType: "application/json", encoding: "GZIP", body: gzipOf(t, []byte(`{"a":1}`)), want: `{"a":1}`},
		{name: "MessagePack scalars", contentType: "application/msgpack",
			body: msgpackOf(t, map[string]any{"f32": float32(23.4), "f64": 23.4, "neg": int8(-5), "u": uint64(math.MaxUint64),
				"s": "é", "n": nil, "t": true, "bin": []byte{1, 2}, "arr": []any{1, "x"}}),
			want: `{"arr":[1,"x"],"bin":"AQI=","f32":23.4,"f64":23.4,"n":null,"neg":-5,"s":"é","t":true,"u":18446744073709551615}`},
		{name: "MessagePack timestamp is Unix milliseconds", contentType: "application/msgpack",
			body: msgpackOf(t, map[string]any{"ts": ts}), want: `{"ts":1700000000123}`},
		{name: "MessagePack 32-bit timestamp", contentType: "application/msgpack",
			body: raw(0x81, 0xa2, 't', 's', 0xd6, 0xff, 0, 0, 0, 2), want: `{"ts":2000}`},
		{name: "MessagePack integer keys", contentType: "application/msgpack",
			body: raw(0x82, 0x01, 0xa1, 'a', 0xd0, 0xfe, 0xc3), want: `{"-2":true,"1":"a"}`},

		{name: "no Content-Type", body: []byte(`{}`), wantErr: errUnsupported},
		{name: "XML", contentType: "application/xml", body: []byte(`<a/>`), wantErr: errUnsupported},
		{name: "bad Content-Type", contentType: "application/json; charset", body: []byte(`{}`), wantErr: errUnsupported},
		{name: "deflate", contentType: "application/json", encoding: "deflate", body: []byte(`{}`), wantErr: errUnsupported},
		{name: "two codings", contentType: "application/json", encoding: "gzip, gzip", body: []byte(`{}`), wantErr: errUnsupported},
		{name: "decompresses too far", contentType: "application/json", encoding: "gzip",
			body: gzipOf(t, []byte(`{"a":"`+strings.Repeat("x", maxIngestBody)+`"}`)), wantErr: errTooLarge},
		{name: "too large", contentType: "application/json", body: []byte(`{"a":"` + strings.Repeat("x", maxIngestBody) + `"}`), wantErr: errTooLarge},
		{name: "truncated gzip", contentType: "application/json", encoding: "gzip", body: gzipOf(t, []byte(`{"a":1}`))[:12], wantErr: errBadBody, reason: "gzip"},
		{name: "empty", contentType: "application/json", body: nil, wantErr: errBadBody, reason: "EOF"},
		{name: "JSON with trailing data", contentType: "application/json", body: []byte(`{"a":1} x`), wantErr: errBadBody, reason: "after the reading"},
		{name: "JSON scalar", contentType: "application/json", body: []byte(`7`), wantErr: errBadBody, reason: "number, want an object"},
		{name: "NDJSON two lines", contentType: "application/x-ndjson", body: []byte("{}\n{}"), wantErr: errBadBody, reason: "2 lines"},
		{name: "MessagePack array", contentType: "application/msgpack", body: msgpackOf(t, []int{1}), wantErr: errBadBody, reason: "array, want an object"},
		{name: "MessagePack NaN", contentType: "application/msgpack", body: msgpackOf(t, map[string]any{"x": math.NaN()}), wantErr: errBadBody, reason: "no JSON form"},
		{name: "MessagePack infinite float32", contentType: "application/msgpack", body: msgpackOf(t, map[string]any{"x": float32(math.Inf(1))}), wantErr: errBadBody, reason: "no JSON form"},
		{name: "MessagePack other extension", contentType: "application/msgpack", body: raw(0x81, 0xa1, 'x', 0xd4, 0x05, 0x00), wantErr: errBadBody, reason: "extension type 5"},
		{name: "MessagePack bad timestamp length", contentType: "application/msgpack", body: raw(0x81, 0xa1, 'x', 0xd5, 0xff, 0, 0), wantErr: errBadBody, reason: "timestamp of 2 bytes"},
		{name: "MessagePack string claiming 4 GiB", contentType: "application/msgpack", body: raw(0x81, 0xa1, 'x', 0xdb, 0xff, 0xff, 0xff, 0xff, 'a'), wantErr: errBadBody, reason: "bytes are left"},
		{name: "MessagePack bin claiming 4 GiB", contentType: "application/msgpack", body: raw(0x81, 0xa1, 'x', 0xc6, 0xff, 0xff, 0xff, 0xff), wantErr: errBadBody, reason: "bytes are left"},
		{name: "MessagePack array claiming 4G elements", contentType: "application/msgpack", body: raw(0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff), wantErr: errBadBody, reason: "bytes are left"},
		{name: "MessagePack map claiming 4G pairs", contentType: "application/msgpack", body: raw(0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0), wantErr: errBadBody, reason: "bytes are left"},
		{name: "MessagePack nested too deep", contentType: "application/msgpack",
			body: append(append([]byte{0x81, 0xa1, 'x'}, bytes.Repeat([]byte{0x91}, 100)...), 0xc0), wantErr: errBadBody, reason: "nested deeper"},
		{name: "MessagePack string not UTF-8", contentType: "application/msgpack", body: raw(0x81, 0xa1, 'x', 0xa1, 0xff), wantErr: errBadBody, reason: "not UTF-8"},
		{name: "MessagePack array key", contentType: "application/msgpack", body: raw(0x81, 0x90, 0xc0), wantErr: errBadBody, reason: "want a string or an integer"},
		{name: "MessagePack unused code", contentType: "application/msgpack", body: raw(0x81, 0xa1, 'x', 0xc1), wantErr: errBadBody, reason: "not a MessagePack value"},
		{name: "MessagePack trailing bytes", contentType: "application/msgpack", body: append(msgpackOf(t, map[string]int{"a": 1}), 0xc0), wantErr: errBadBody, reason: "1 bytes after"},
		{name: "MessagePack truncated", contentType: "application/msgpack", body: raw(0x81, 0xa1, 'a', 0xcd, 0x01), wantErr: errBadBody, reason: "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeIngest(tt.contentType, tt.encoding, tt.body)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.reason) {
					t.Fatalf("decodeIngest = %q, %v; want %v mentioning %q", got, err, tt.wantErr, tt.reason)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("decodeIngest = %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}

// FuzzIngestDecode feeds the ingest decoder arbitrary bodies in each
// encoding: it must never panic, and what it accepts must be one JSON
// object in canonical form (decoding it again as JSON changes nothing).
func FuzzIngestDecode(f *testing.F) {
	types := []string{"application/json", "application/x-ndjson", "application/msgpack"}
	reading := map[string]any{"ts": int64(1700000000000), "seq": 7, "metrics": map[string]any{"t": 23.4, "h": float32(40.5)},
		"at": time.Unix(1700000000, 5e6), "raw": []byte{0, 1}, "tags": []any{"a", nil, true}}
	f.Add(uint8(0), false, []byte(`{"ts":1700000000000,"seq":7,"metrics":{"t":23.4}}`))
	f.Add(uint8(0), true, gzipOf(f, []byte(`{"ts":1,"seq":1e3,"metrics":{"t":-0.0}}`)))
	f.Add(uint8(1), false, []byte("{\"a\":[1,2,{\"b\":null}]}\n"))
	f.Add(uint8(2), false, msgpackOf(f, reading))
	f.Add(uint8(2), true, gzipOf(f, msgpackOf(f, reading)))
	f.Add(uint8(2), false, raw(0x81, 0xa1, 'x', 0xdb, 0xff, 0xff, 0xff, 0xff))
	f.Add(uint8(2), false, raw(0x82, 0x01, 0xa1, 'a', 0xd0, 0xfe, 0xd7, 0xff, 1, 2, 3, 4, 5, 6, 7, 8))
	f.Fuzz(func(t *testing.T, typ uint8, gzipped bool, body []byte) {
		encoding := ""
		if gzipped {
			encoding = "gzip"
		}
		out, err := decodeIngest(types[int(typ)%len(types)], encoding, body)
		if err != nil {
			if !errors.Is(err, errBadBody) && !errors.Is(err, errTooLarge) {
				t.Fatalf("error %v is neither a bad body nor too large", err)
			}
			return
		}
		var obj map[string]any
		if err := json.Unmarshal(out, &obj); err != nil || obj == nil {
			t.Fatalf("payload %q is not a JSON object: %v", out, err)
		}
		if len(out) > maxIngestBody {
			return // the router refuses it
		}
		again, err := decodeIngest("application/json", "", out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("payload %q decodes again to %q, %v", out, again, err)
		}
	})
}
