package schemas

import "unicode/utf8"

// DeadLetter is a message the pipeline could not use, kept with the reason.
// Its first columns are those of Dataflow's own dead-letter tables (timestamp,
// payloadString, payloadBytes, attributes, errorMessage, stacktrace), so tools
// built for those read these too.
type DeadLetter struct {
	// TimestampMillis is when the record was dead-lettered (Unix ms).
	TimestampMillis int64
	PayloadString   string
	PayloadBytes    []byte
	Attributes      map[string]string
	ErrorMessage    string
	Stacktrace      string
	// Stage names the pipeline step that refused the message (parse, validate, ...).
	Stage string
	// SchemaID is the schema the message was checked against, when one was known.
	SchemaID string
	// MessageID and PublishMillis identify the source message.
	MessageID     string
	PublishMillis int64
	// AckID is the source's receipt for the message (see Event.AckID).
	AckID string
}

// NewDeadLetter builds the record for a payload refused at stage with err.
// The payload is kept whole as bytes, and as text when it is valid UTF-8.
func NewDeadLetter(stage string, data []byte, attrs map[string]string, messageID, ackID string, publishMillis, nowMillis int64, err error) DeadLetter {
	d := DeadLetter{
		TimestampMillis: nowMillis,
		PayloadBytes:    data,
		Attributes:      attrs,
		ErrorMessage:    err.Error(),
		Stage:           stage,
		MessageID:       messageID,
		AckID:           ackID,
		PublishMillis:   publishMillis,
	}
	if utf8.Valid(data) {
		d.PayloadString = string(data)
	}
	return d
}
