package httpbridge

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
)

// Ingest bodies are a reading at most publisher.MaxTelemetryBytes long once
// decompressed; on the wire they may be a little longer (gzip of data that
// does not compress).
const (
	maxIngestBody    = publisher.MaxTelemetryBytes
	maxIngestWire    = maxIngestBody + 4<<10
	maxMsgpackDepth  = 64
	msgpackTimestamp = -1 // the MessagePack timestamp extension type
)

// Decoding errors, for errors.Is; ingest maps them to 415, 413 and 400.
var (
	errUnsupported = errors.New("unsupported media")
	errTooLarge    = errors.New("body too large")
	errBadBody     = errors.New("bad body")
)

// ingestResponse is the 202 answer.
type ingestResponse struct {
	MessageID string `json:"messageId"`
}

// ingest is the reference design's POST /v1/ingest/{device_id}: one
// reading of the device, as JSON, NDJSON or MessagePack, optionally
// gzipped, published as the JSON payload the pipeline reads (see
// decodeIngest) to the registry's catch-all telemetry topic. 202 means
// Pub/Sub has stored it.
func (b *Bridge) ingest(w http.ResponseWriter, r *http.Request, dev mqttbridge.Device) *apiError {
	body, aerr := readBody(w, r, maxIngestWire)
	if aerr != nil {
		return aerr
	}
	payload, err := decodeIngest(r.Header.Get("Content-Type"), r.Header.Get("Content-Encoding"), body)
	switch {
	case errors.Is(err, errUnsupported):
		return unsupportedMedia("%v", err)
	case errors.Is(err, errTooLarge):
		return tooLarge("%v", err)
	case err != nil:
		return badRequest("%v", err)
	}
	sent, aerr := b.publish(r, publisher.Message{Device: dev.Path, NumID: dev.NumID, Kind: iotcore.Events, Data: payload})
	if aerr != nil {
		return aerr
	}
	writeJSON(w, http.StatusAccepted, ingestResponse{MessageID: sent.MessageID})
	return nil
}

// decodeIngest returns the payload to publish for an ingest body: its one
// JSON object, re-encoded in one canonical form whatever the body's
// encoding, so that the same reading sent as JSON or as MessagePack is the
// same Pub/Sub message. The canonical form is compact JSON with keys
// sorted, no HTML escaping, numbers with an integer value (up to 64 bits)
// in decimal and other numbers as Go prints a float64 (the shortest form
// that reads back the same; MessagePack float32s in their shortest float32
// form). MessagePack adds what JSON lacks: binary becomes base64 text (as
// encoding/json writes []byte), timestamps become Unix milliseconds (the
// payload's "ts" unit), integer map keys become decimal strings; anything
// else JSON cannot hold (NaN, other extensions, other key types) is refused.
//
// The payload's fields are not checked here: like MQTT and publishEvent
// messages, readings are validated by the pipeline, which dead-letters
// them with the reason.
func decodeIngest(contentType, contentEncoding string, body []byte) ([]byte, error) {
	mediaType := ""
	if contentType != "" {
		mt, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return nil, fmt.Errorf("%w: Content-Type %q: %v", errUnsupported, clip(contentType), err)
		}
		mediaType = mt
	}
	var decode func([]byte) (any, error)
	switch mediaType {
	case "application/json":
		decode = decodeJSON
	case "application/x-ndjson":
		decode = decodeNDJSON
	case "application/msgpack", "application/x-msgpack", "application/vnd.msgpack":
		decode = decodeMsgpack
	default:
		return nil, fmt.Errorf("%w: Content-Type %q: want application/json, application/x-ndjson or application/msgpack",
			errUnsupported, clip(contentType))
	}

	switch strings.ToLower(strings.TrimSpace(contentEncoding)) {
	case "", "identity":
	case "gzip", "x-gzip":
		var err error
		if body, err = gunzip(body); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: Content-Encoding %q: want gzip or none", errUnsupported, clip(contentEncoding))
	}
	if len(body) > maxIngestBody {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errTooLarge, len(body), maxIngestBody)
	}

	v, err := decode(body)
	if err != nil {
		return nil, err
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("%w: the reading is a %s, want an object", errBadBody, kind(v))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("%w: encode as JSON: %v", errBadBody, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// gunzip decompresses at most maxIngestBody bytes, so that a small gzip
// bomb costs no more memory than an honest body.
func gunzip(body []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: gzip: %v", errBadBody, err)
	}
	out, err := io.ReadAll(io.LimitReader(zr, maxIngestBody+1))
	if err != nil {
		return nil, fmt.Errorf("%w: gzip: %v", errBadBody, err)
	}
	if len(out) > maxIngestBody {
		return nil, fmt.Errorf("%w: over %d bytes decompressed", errTooLarge, maxIngestBody)
	}
	return out, nil
}

// decodeJSON reads exactly one JSON value.
func decodeJSON(body []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: JSON: %v", errBadBody, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: JSON: data after the reading; send one reading per request", errBadBody)
	}
	return normalizeJSON(v)
}

// decodeNDJSON reads a body of one line holding one reading.
func decodeNDJSON(body []byte) (any, error) {
	if n := bytes.Count(bytes.TrimSpace(body), []byte("\n")) + 1; n > 1 {
		return nil, fmt.Errorf("%w: NDJSON: %d lines; send one reading per request", errBadBody, n)
	}
	return decodeJSON(body)
}

// normalizeJSON replaces each json.Number by the value it is in the
// canonical form: an int64 or uint64 if it is an integer that fits, else a
// float64.
func normalizeJSON(v any) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			n, err := normalizeJSON(x)
			if err != nil {
				return nil, err
			}
			v[k] = n
		}
	case []any:
		for i, x := range v {
			n, err := normalizeJSON(x)
			if err != nil {
				return nil, err
			}
			v[i] = n
		}
	case json.Number:
		if i, err := strconv.ParseInt(v.String(), 10, 64); err == nil {
			return i, nil
		}
		if u, err := strconv.ParseUint(v.String(), 10, 64); err == nil {
			return u, nil
		}
		f, err := strconv.ParseFloat(v.String(), 64)
		if err != nil {
			return nil, fmt.Errorf("%w: JSON: number %s is out of a float64's range", errBadBody, clip(v.String()))
		}
		return canonicalFloat(f), nil
	}
	return v, nil
}

// canonicalFloat returns a float with an integer value as that integer,
// so that 7, 7.0 and 7e0 (and -0.0 and 0) are written alike.
func canonicalFloat(f float64) any {
	if f == math.Trunc(f) && math.Abs(f) < 1<<63 {
		return int64(f)
	}
	return f
}

// msgpackReader converts one MessagePack value to the values
// encoding/json writes. It checks every length against the bytes left
// before allocating, since a header can claim 4 GiB in five bytes.
type msgpackReader struct {
	r *bytes.Reader // what the decoder reads, unbuffered, so r.Len() is what is left
	d *msgpack.Decoder
}

func decodeMsgpack(body []byte) (any, error) {
	r := bytes.NewReader(body)
	m := msgpackReader{r: r, d: msgpack.NewDecoder(r)}
	v, err := m.value(0)
	if err != nil {
		return nil, fmt.Errorf("%w: MessagePack at byte %d: %v", errBadBody, len(body)-r.Len(), err)
	}
	if r.Len() > 0 {
		return nil, fmt.Errorf("%w: MessagePack: %d bytes after the value; send one reading per request", errBadBody, r.Len())
	}
	return v, nil
}

func (m msgpackReader) value(depth int) (any, error) {
	if depth > maxMsgpackDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxMsgpackDepth)
	}
	c, err := m.d.PeekCode()
	if err != nil {
		return nil, unexpectedEnd(err)
	}
	switch {
	case c == msgpcode.Nil:
		return nil, m.d.DecodeNil()
	case c == msgpcode.True || c == msgpcode.False:
		return m.d.DecodeBool()
	case msgpcode.IsFixedNum(c) || c == msgpcode.Int8 || c == msgpcode.Int16 || c == msgpcode.Int32 || c == msgpcode.Int64:
		v, err := m.d.DecodeInt64()
		return v, unexpectedEnd(err)
	case c == msgpcode.Uint8 || c == msgpcode.Uint16 || c == msgpcode.Uint32 || c == msgpcode.Uint64:
		v, err := m.d.DecodeUint64()
		if err != nil {
			return nil, unexpectedEnd(err)
		}
		if v <= math.MaxInt64 {
			return int64(v), nil // one form per number, as JSON's integers get
		}
		return v, nil
	case c == msgpcode.Float:
		f, err := m.d.DecodeFloat32()
		if err != nil {
			return nil, unexpectedEnd(err)
		}
		// The float64 nearest to the float32's shortest decimal form, so
		// that 23.4 sent as a float32 is written 23.4, not 23.399999618530273.
		return finite(strconv.ParseFloat(strconv.FormatFloat(float64(f), 'g', -1, 32), 64))
	case c == msgpcode.Double:
		return finite(m.d.DecodeFloat64())
	case msgpcode.IsString(c):
		b, err := m.bytes()
		if err != nil {
			return nil, err
		}
		if !utf8.Valid(b) {
			return nil, errors.New("string is not UTF-8")
		}
		return string(b), nil
	case msgpcode.IsBin(c):
		return m.bytes() // encoding/json writes []byte as base64
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		return m.array(depth)
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		return m.object(depth)
	case msgpcode.IsExt(c):
		return m.ext()
	}
	return nil, fmt.Errorf("code %#x is not a MessagePack value", c)
}

// bytes reads a str or bin.
func (m msgpackReader) bytes() ([]byte, error) {
	n, err := m.d.DecodeBytesLen()
	if err != nil {
		return nil, unexpectedEnd(err)
	}
	return m.take(n)
}

// take reads the n bytes a header announced.
func (m msgpackReader) take(n int) ([]byte, error) {
	if n < 0 || n > m.r.Len() {
		return nil, fmt.Errorf("length %d, but %d bytes are left", n, m.r.Len())
	}
	b := make([]byte, n)
	if err := m.d.ReadFull(b); err != nil {
		return nil, unexpectedEnd(err)
	}
	return b, nil
}

func (m msgpackReader) array(depth int) (any, error) {
	n, err := m.d.DecodeArrayLen()
	if err != nil {
		return nil, unexpectedEnd(err)
	}
	if n > m.r.Len() { // every element takes a byte at least
		return nil, fmt.Errorf("array of %d elements, but %d bytes are left", n, m.r.Len())
	}
	a := make([]any, 0, n)
	for range n {
		v, err := m.value(depth + 1)
		if err != nil {
			return nil, err
		}
		a = append(a, v)
	}
	return a, nil
}

func (m msgpackReader) object(depth int) (any, error) {
	n, err := m.d.DecodeMapLen()
	if err != nil {
		return nil, unexpectedEnd(err)
	}
	if n > m.r.Len()/2 { // every pair takes two bytes at least
		return nil, fmt.Errorf("map of %d pairs, but %d bytes are left", n, m.r.Len())
	}
	obj := make(map[string]any, n)
	for range n {
		k, err := m.key()
		if err != nil {
			return nil, err
		}
		v, err := m.value(depth + 1)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", clip(k), err)
		}
		obj[k] = v
	}
	return obj, nil
}

// key reads a map key as a JSON object key: a string, or an integer in decimal.
func (m msgpackReader) key() (string, error) {
	c, err := m.d.PeekCode()
	if err != nil {
		return "", unexpectedEnd(err)
	}
	if !msgpcode.IsString(c) && !msgpcode.IsBin(c) && !msgpcode.IsFixedNum(c) &&
		(c < msgpcode.Uint8 || c > msgpcode.Int64) {
		return "", fmt.Errorf("map key of code %#x: want a string or an integer", c)
	}
	k, err := m.value(maxMsgpackDepth) // scalars only: no nesting below
	if err != nil {
		return "", fmt.Errorf("map key: %w", err)
	}
	switch k := k.(type) {
	case string:
		return k, nil
	case []byte:
		if !utf8.Valid(k) {
			return "", errors.New("map key is not UTF-8")
		}
		return string(k), nil
	case int64:
		return strconv.FormatInt(k, 10), nil
	default:
		return fmt.Sprint(k), nil // uint64
	}
}

// ext reads an extension value: only timestamps have a JSON form.
func (m msgpackReader) ext() (any, error) {
	typ, n, err := m.d.DecodeExtHeader()
	if err != nil {
		return nil, unexpectedEnd(err)
	}
	b, err := m.take(n)
	if err != nil {
		return nil, err
	}
	if typ != msgpackTimestamp {
		return nil, fmt.Errorf("extension type %d has no JSON form", typ)
	}
	var t time.Time
	switch n {
	case 4:
		t = time.Unix(int64(binary.BigEndian.Uint32(b)), 0)
	case 8:
		v := binary.BigEndian.Uint64(b)
		t = time.Unix(int64(v&(1<<34-1)), int64(v>>34))
	case 12:
		t = time.Unix(int64(binary.BigEndian.Uint64(b[4:])), int64(binary.BigEndian.Uint32(b)))
	default:
		return nil, fmt.Errorf("timestamp of %d bytes, want 4, 8 or 12", n)
	}
	return t.UnixMilli(), nil
}

func finite(f float64, err error) (any, error) {
	if err != nil {
		return nil, unexpectedEnd(err)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("number %v has no JSON form", f)
	}
	return canonicalFloat(f), nil
}

// unexpectedEnd names a body that ends mid-value, which the decoder
// reports as a bare io.EOF.
func unexpectedEnd(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// kind names a decoded value's JSON type.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string, []byte:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	default:
		return "number"
	}
}
