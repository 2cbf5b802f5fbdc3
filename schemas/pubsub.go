package schemas

import (
	"encoding/json"
	"strconv"
	"time"
)

// Attributes iotpipe adds to a dead letter published to the dead-letter
// topic. The message keeps the source's payload and attributes untouched, so
// a consumer that fixed the cause can republish it to the events topic as
// it is; these say why it was refused and which source message it was
// (publishers to the dead-letter topic are at least once: deduplicate on
// AttrSourceMessageID).
const (
	AttrDeadLetterError   = "iotpipe_error"
	AttrDeadLetterStage   = "iotpipe_stage"
	AttrDeadLetterSchema  = "iotpipe_schema_id"
	AttrSourceMessageID   = "iotpipe_message_id"
	AttrSourcePublishTime = "iotpipe_publish_time"
)

// maxAttributeValue is Pub/Sub's limit on an attribute value's size.
const maxAttributeValue = 1024

// PubsubMessage is d as a message for the dead-letter topic: the refused
// payload with its source attributes plus the iotpipe_* attributes above.
func (d DeadLetter) PubsubMessage() (data []byte, attrs map[string]string) {
	attrs = make(map[string]string, len(d.Attributes)+5)
	for k, v := range d.Attributes {
		attrs[k] = v
	}
	attrs[AttrDeadLetterError] = clipUTF8(d.ErrorMessage, maxAttributeValue)
	attrs[AttrDeadLetterStage] = d.Stage
	if d.SchemaID != "" {
		attrs[AttrDeadLetterSchema] = d.SchemaID
	}
	if d.MessageID != "" {
		attrs[AttrSourceMessageID] = d.MessageID
	}
	if d.PublishMillis != 0 {
		attrs[AttrSourcePublishTime] = time.UnixMilli(d.PublishMillis).UTC().Format(time.RFC3339Nano)
	}
	return d.PayloadBytes, attrs
}

// clipUTF8 cuts s to at most n bytes without splitting a character.
func clipUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// alertJSON is an alert's form on the alerts topic.
type alertJSON struct {
	DeviceID  string  `json:"device_id"`
	Metric    string  `json:"metric"`
	Value     float64 `json:"value"`
	TS        int64   `json:"ts"`
	Seq       int64   `json:"seq"`
	Kind      string  `json:"kind"`
	Threshold float64 `json:"threshold"`
	Site      string  `json:"site,omitempty"`
	Owner     string  `json:"owner,omitempty"`
}

// PubsubMessage is a as a message for the alerts topic: JSON with
// snake_case fields, and the device, metric and kind as attributes so
// subscriptions can filter on them.
func (a Alert) PubsubMessage() (data []byte, attrs map[string]string) {
	// Values come from validated readings and thresholds: finite numbers,
	// which always marshal.
	data, _ = json.Marshal(alertJSON(a))
	return data, map[string]string{
		AttrDeviceID: a.DeviceID,
		"metric":     a.Metric,
		"kind":       a.Kind,
		"seq":        strconv.FormatInt(a.Seq, 10),
	}
}
