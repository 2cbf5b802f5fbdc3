package schemas

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDeadLetterPubsubMessage(t *testing.T) {
	src := map[string]string{AttrDeviceID: "dev-1", AttrSubFolder: "x"}
	d := NewDeadLetter("validate", []byte(`{"seq":`), src, "m42", "ack", 1700000000123, 1700000001000, errors.New("unexpected end of JSON input"))
	d.SchemaID = "thermostat/1.1"
	data, attrs := d.PubsubMessage()
	if string(data) != `{"seq":` {
		t.Errorf("data = %q, want the refused payload unchanged", data)
	}
	want := map[string]string{
		AttrDeviceID: "dev-1", AttrSubFolder: "x",
		AttrDeadLetterError: "unexpected end of JSON input", AttrDeadLetterStage: "validate",
		AttrDeadLetterSchema: "thermostat/1.1", AttrSourceMessageID: "m42",
		AttrSourcePublishTime: "2023-11-14T22:13:20.123Z",
	}
	if len(attrs) != len(want) {
		t.Errorf("attrs = %v, want %v", attrs, want)
	}
	for k, v := range want {
		if attrs[k] != v {
			t.Errorf("attrs[%s] = %q, want %q", k, attrs[k], v)
		}
	}
	if len(src) != 2 {
		t.Errorf("source attributes modified: %v", src)
	}
}

func TestDeadLetterErrorClippedToAttributeLimit(t *testing.T) {
	long := strings.Repeat("é", 700) // 1,400 bytes
	d := NewDeadLetter("validate", nil, nil, "", "", 0, 0, errors.New(long))
	_, attrs := d.PubsubMessage()
	got := attrs[AttrDeadLetterError]
	if len(got) > maxAttributeValue || !utf8.ValidString(got) || !strings.HasPrefix(long, got) || len(got) < maxAttributeValue-1 {
		t.Errorf("error attribute: %d bytes, valid UTF-8 %v; want a UTF-8 prefix of at most %d bytes", len(got), utf8.ValidString(got), maxAttributeValue)
	}
	if _, ok := attrs[AttrSourcePublishTime]; ok {
		t.Error("publish time attribute set for a dead letter without one")
	}
}

func TestAlertPubsubMessage(t *testing.T) {
	a := Alert{DeviceID: "dev-1", Metric: "temperature", Value: 91.5, TS: 1700000000000, Seq: 7, Kind: "above_max", Threshold: 90, Site: "s1"}
	data, attrs := a.PubsubMessage()
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("alert JSON %s: %v", data, err)
	}
	if got["device_id"] != "dev-1" || got["value"] != 91.5 || got["kind"] != "above_max" || got["site"] != "s1" {
		t.Errorf("alert JSON = %s", data)
	}
	if _, ok := got["owner"]; ok {
		t.Errorf("empty owner present: %s", data)
	}
	if attrs[AttrDeviceID] != "dev-1" || attrs["metric"] != "temperature" || attrs["kind"] != "above_max" || attrs["seq"] != "7" {
		t.Errorf("attrs = %v", attrs)
	}
}
