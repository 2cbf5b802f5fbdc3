package schemas

import (
	"strings"
	"testing"
)

func TestTelemetryRowIsDeterministic(t *testing.T) {
	e := Event{DeviceID: "d1", TS: 1700000000000, Seq: 7, Metrics: MetricsOf(map[string]float64{"b": 0.1, "a": 21.5, "c": -3e-9}), MessageID: "m1", PublishMillis: 1700000000123}
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

func TestTelemetryKeyLayout(t *testing.T) {
	for _, c := range []struct {
		device  string
		ts, seq int64
		want    string
	}{
		{"d1", 0, 0, "d1#0000000000000#0"},
		{"d1", 1700000000123, 42, "d1#1700000000123#42"},
		{"dev-7", 99999999999999, -3, "dev-7#99999999999999#-3"},
		{"d", -5, 1, "d#-000000000005#1"},
	} {
		if got := TelemetryKey(c.device, c.ts, c.seq); got != c.want {
			t.Errorf("TelemetryKey(%q, %d, %d) = %q, want %q", c.device, c.ts, c.seq, got, c.want)
		}
	}
}
