package enrich

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fsouza/fake-gcs-server/fakestorage"

	"github.com/iotpipe/iotpipe/schemas"
)

func bounds(lo, hi *float64) schemas.Threshold {
	var t schemas.Threshold
	if lo != nil {
		t.HasMin, t.Min = true, *lo
	}
	if hi != nil {
		t.HasMax, t.Max = true, *hi
	}
	return t
}

func f(v float64) *float64 { return &v }

const goodCSV = `device_id,site,location,device_class,owner,thresholds
d1,plant-a,hall-1,thermostat,ops,temperature:-10:40;humidity::80
d2,plant-b,roof,weather,facilities,
"d3","plant, with comma",x,y,z, pressure:900: ;
`

const goodNDJSON = `{"device_id":"d1","site":"plant-a","location":"hall-1","device_class":"thermostat","owner":"ops","thresholds":{"temperature":{"min":-10,"max":40},"humidity":{"max":80}}}
{"device_id":"d2","site":"plant-b","location":"roof","device_class":"weather","owner":"facilities"}

{"device_id":"d3","site":"plant, with comma","location":"x","device_class":"y","owner":"z","thresholds":{"pressure":{"min":900,"max":null}}}
`

func goodRefs() []schemas.Reference {
	return []schemas.Reference{
		{DeviceID: "d1", Site: "plant-a", Location: "hall-1", DeviceClass: "thermostat", Owner: "ops",
			Thresholds: map[string]schemas.Threshold{"temperature": bounds(f(-10), f(40)), "humidity": bounds(nil, f(80))}},
		{DeviceID: "d2", Site: "plant-b", Location: "roof", DeviceClass: "weather", Owner: "facilities"},
		{DeviceID: "d3", Site: "plant, with comma", Location: "x", DeviceClass: "y", Owner: "z",
			Thresholds: map[string]schemas.Threshold{"pressure": bounds(f(900), nil)}},
	}
}

func TestLoadReference(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		data    string
		want    []schemas.Reference
		wantErr string // substring; the file name is always checked too
	}{
		{name: "csv", file: "ref.csv", data: goodCSV, want: goodRefs()},
		{name: "ndjson", file: "ref.ndjson", data: goodNDJSON, want: goodRefs()},
		{name: "jsonl, no final newline", file: "ref.jsonl", data: strings.TrimSuffix(goodNDJSON, "\n"), want: goodRefs()},
		{name: "csv columns reordered and partial", file: "ref.csv", data: "owner,device_id\nops,d9\n",
			want: []schemas.Reference{{DeviceID: "d9", Owner: "ops"}}},
		{name: "csv header only", file: "ref.csv", data: "device_id,site\n", want: nil},

		{name: "unknown extension", file: "ref.txt", data: goodCSV, wantErr: `unknown format ".txt"`},
		{name: "csv empty", file: "ref.csv", data: "", wantErr: "empty file"},
		{name: "csv no device_id column", file: "ref.csv", data: "site,owner\na,b\n", wantErr: "no device_id column"},
		{name: "csv unknown column", file: "ref.csv", data: "device_id,treshold\nd1,x\n", wantErr: `unknown column "treshold"`},
		{name: "csv short row", file: "ref.csv", data: "device_id,site\nd1,a\nd2\n", wantErr: "line 3"},
		{name: "csv empty device", file: "ref.csv", data: "device_id,site\nd1,a\n,b\n", wantErr: "ref.csv:3: empty device_id"},
		{name: "csv duplicate device", file: "ref.csv", data: "device_id\nd1\nd2\nd1\n", wantErr: `ref.csv:4: device "d1" is already defined on line 2`},
		{name: "csv threshold not a number", file: "ref.csv", data: "device_id,thresholds\nd1,t:cold:40\n", wantErr: `ref.csv:2: device "d1": threshold "t:cold:40": bound "cold" is not a number`},
		{name: "csv threshold wrong shape", file: "ref.csv", data: "device_id,thresholds\nd1,t:40\n", wantErr: "ref.csv:2: device \"d1\": threshold \"t:40\": want metric:min:max"},
		{name: "csv threshold unbounded both", file: "ref.csv", data: "device_id,thresholds\nd1,t::\n", wantErr: "neither min nor max"},
		{name: "csv threshold min above max", file: "ref.csv", data: "device_id,thresholds\nd1,t:50:40\n", wantErr: "min 50 is above max 40"},
		{name: "csv threshold NaN", file: "ref.csv", data: "device_id,thresholds\nd1,t:NaN:40\n", wantErr: "not finite"},
		{name: "csv metric twice", file: "ref.csv", data: "device_id,thresholds\nd1,t:1:2;t:3:4\n", wantErr: `metric "t" has two thresholds`},
		{name: "csv bad quoting", file: "ref.csv", data: "device_id,site\nd1,\"open\n", wantErr: "ref.csv"},

		{name: "ndjson not json", file: "ref.ndjson", data: `{"device_id":"d1"}` + "\nhello\n", wantErr: "ref.ndjson:2: not a reference JSON object"},
		{name: "ndjson unknown field", file: "ref.ndjson", data: `{"device_id":"d1","treshold":{}}`, wantErr: `ref.ndjson:1: not a reference JSON object: json: unknown field "treshold"`},
		{name: "ndjson no device", file: "ref.ndjson", data: `{"site":"a"}`, wantErr: "ref.ndjson:1: empty device_id"},
		{name: "ndjson duplicate device", file: "ref.ndjson", data: "{\"device_id\":\"d1\"}\n\n{\"device_id\":\"d1\"}\n", wantErr: `ref.ndjson:3: device "d1" is already defined on line 1`},
		{name: "ndjson threshold string", file: "ref.ndjson", data: `{"device_id":"d1","thresholds":{"t":{"max":"40"}}}`, wantErr: "ref.ndjson:1: not a reference JSON object"},
		{name: "ndjson threshold without bounds", file: "ref.ndjson", data: `{"device_id":"d1","thresholds":{"t":{}}}`, wantErr: `ref.ndjson:1: device "d1": metric "t": threshold has neither min nor max`},
		{name: "ndjson two objects on a line", file: "ref.ndjson", data: `{"device_id":"d1"} {"device_id":"d2"}`, wantErr: "ref.ndjson:1: trailing data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tt.file)
			if err := os.WriteFile(path, []byte(tt.data), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := LoadReference(context.Background(), path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), tt.file) {
					t.Fatalf("LoadReference(%s) error = %v, want one naming %s and containing %q", tt.file, err, tt.file, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadReference(%s): %v", tt.file, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LoadReference(%s) =\n%+v\nwant\n%+v", tt.file, got, tt.want)
			}
		})
	}
}

func TestLoadReferenceMissingFile(t *testing.T) {
	_, err := LoadReference(context.Background(), filepath.Join(t.TempDir(), "nope.csv"))
	if err == nil || !strings.Contains(err.Error(), "nope.csv") {
		t.Fatalf("error = %v, want one naming nope.csv", err)
	}
}

// startGCS runs fake-gcs-server on a free local port and points the storage
// client at it through STORAGE_EMULATOR_HOST.
func startGCS(t *testing.T, objects ...fakestorage.Object) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	// We own the listener so the port is known before the server is built:
	// PublicHost must match the Host header of the client's XML-API reads.
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		InitialObjects: objects,
		NoListener:     true,
		Scheme:         "http",
		PublicHost:     addr,
		ExternalURL:    "http://" + addr,
		Writer:         testWriter{t},
	})
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.HTTPHandler()}
	go hs.Serve(l)
	t.Cleanup(func() {
		hs.Close()
		srv.Stop()
	})
	t.Setenv("STORAGE_EMULATOR_HOST", "http://"+addr)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("fake-gcs: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestLoadReferenceFromGCS(t *testing.T) {
	obj := func(name, data string) fakestorage.Object {
		return fakestorage.Object{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "refdata", Name: name}, Content: []byte(data)}
	}
	startGCS(t,
		obj("b/devices.csv", goodCSV),
		obj("devices.ndjson", goodNDJSON),
		obj("bad.csv", "device_id\nd1\nd1\n"),
	)
	ctx := context.Background()
	for _, path := range []string{"gs://refdata/b/devices.csv", "gs://refdata/devices.ndjson"} {
		got, err := LoadReference(ctx, path)
		if err != nil {
			t.Fatalf("LoadReference(%s): %v", path, err)
		}
		if !reflect.DeepEqual(got, goodRefs()) {
			t.Errorf("LoadReference(%s) = %+v, want %+v", path, got, goodRefs())
		}
	}
	for path, want := range map[string]string{
		"gs://refdata/bad.csv":         `gs://refdata/bad.csv:3: device "d1" is already defined`,
		"gs://refdata/missing.csv":     "gs://refdata/missing.csv: storage: object doesn't exist",
		"gs://nobucket/devices.ndjson": "gs://nobucket/devices.ndjson",
		"gs://refdata":                 "want gs://bucket/object",
	} {
		if _, err := LoadReference(ctx, path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadReference(%s) error = %v, want one containing %q", path, err, want)
		}
	}
}
