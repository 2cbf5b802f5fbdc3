package schemas

import (
	"strings"
	"testing"
)

func TestParseEvent(t *testing.T) {
	attrs := map[string]string{AttrDeviceID: "d1", AttrRegistryID: "r", AttrRegistryRegion: "l", AttrProjectID: "p", AttrSubFolder: "x"}
	tests := []struct {
		name    string
		data    string
		attrs   map[string]string
		wantErr string
	}{
		{name: "good", data: `{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5}}`, attrs: attrs},
		{name: "buffered", data: `{"ts":1700000000000,"seq":2,"metrics":{"t":1},"buffered":true}`, attrs: attrs},
		{name: "not json", data: `hello`, attrs: attrs, wantErr: "not a telemetry JSON object"},
		{name: "array", data: `[1,2]`, attrs: attrs, wantErr: "not a telemetry JSON object"},
		{name: "trailing", data: `{"ts":1,"seq":1,"metrics":{"t":1}} {}`, attrs: attrs, wantErr: "trailing data"},
		{name: "no ts", data: `{"seq":1,"metrics":{"t":1}}`, attrs: attrs, wantErr: `no "ts"`},
		{name: "zero ts", data: `{"ts":0,"seq":1,"metrics":{"t":1}}`, attrs: attrs, wantErr: "ts 0"},
		{name: "no seq", data: `{"ts":1,"metrics":{"t":1}}`, attrs: attrs, wantErr: `no "seq"`},
		{name: "negative seq", data: `{"ts":1,"seq":-1,"metrics":{"t":1}}`, attrs: attrs, wantErr: "negative seq"},
		{name: "no metrics", data: `{"ts":1,"seq":1,"metrics":{}}`, attrs: attrs, wantErr: "no metrics"},
		{name: "string metric", data: `{"ts":1,"seq":1,"metrics":{"t":"hot"}}`, attrs: attrs, wantErr: "not a telemetry JSON object"},
		{name: "empty metric name", data: `{"ts":1,"seq":1,"metrics":{"":1}}`, attrs: attrs, wantErr: "empty name"},
		{name: "no device attribute", data: `{"ts":1,"seq":1,"metrics":{"t":1}}`, attrs: map[string]string{}, wantErr: "no deviceId attribute"},
		{name: "oversized", data: `{"ts":1,"seq":1,"metrics":{"t":1},"pad":"` + strings.Repeat("x", MaxTelemetryBytes) + `"}`, attrs: attrs, wantErr: "telemetry limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := ParseEvent([]byte(tt.data), tt.attrs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseEvent(%.60q) error = %v, want one containing %q", tt.data, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseEvent(%q): %v", tt.data, err)
			}
			if e.DeviceID != "d1" || e.Registry != "r" || e.Location != "l" || e.Project != "p" || e.SubFolder != "x" || e.TS <= 0 || len(e.Metrics) == 0 {
				t.Errorf("ParseEvent(%q) = %+v; attributes or payload fields missing", tt.data, e)
			}
		})
	}
}

func TestTelemetryRowIsDeterministic(t *testing.T) {
	e := Event{DeviceID: "d1", TS: 1700000000000, Seq: 7, Metrics: map[string]float64{"b": 0.1, "a": 21.5, "c": -3e-9}, MessageID: "m1", PublishMillis: 1700000000123}
	first := TelemetryRow(e)
	if first.Key != "d1#1700000000000#7" {
		t.Errorf("key = %q, want d1#1700000000000#7", first.Key)
	}
	want := []string{"a=21.5", "b=0.1", "c=-3e-09"}
	for i, w := range want {
		c := first.Cells[i]
		if got := c.Column + "=" + string(c.Value); got != w || c.Family != FamilyMetrics || c.Millis != e.TS {
			t.Errorf("cell %d = %s %s@%d, want %s in %s at the event time", i, c.Family, got, c.Millis, w, FamilyMetrics)
		}
	}
	for i := 0; i < 20; i++ { // map iteration order must not leak into the row
		again := TelemetryRow(e)
		for j := range first.Cells {
			if again.Cells[j].Column != first.Cells[j].Column || string(again.Cells[j].Value) != string(first.Cells[j].Value) {
				t.Fatalf("TelemetryRow is not deterministic: cell %d %v vs %v", j, again.Cells[j], first.Cells[j])
			}
		}
	}
}

func TestTelemetryKeysSortByTimeWithinDevice(t *testing.T) {
	a := TelemetryKey("d1", 999, 1)
	b := TelemetryKey("d1", 1000, 2)
	c := TelemetryKey("d10", 1, 1)
	if !(a < b) {
		t.Errorf("%q should sort before %q", a, b)
	}
	if strings.HasPrefix(c, TelemetryPrefix("d1")) {
		t.Errorf("device d10's key %q must not fall under device d1's prefix %q", c, TelemetryPrefix("d1"))
	}
}
