package schemas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
)

// An Event crosses every stage boundary of the pipeline, several times per
// reading. Beam's default for a struct, the schema row coder, walks it by
// reflection and was ~16 % of the backfill's CPU; these functions are the
// hand-written binary form a Beam coder wraps (transforms/validate
// registers it), kept here, without Beam, beside the type they must follow.
//
// Layout, version 1: the version byte; a flags byte (Buffered,
// Enrichment.Known, Metrics non-nil); the twelve strings as uvarint length
// and bytes, in eventStrings order; TS, Seq and PublishMillis as zigzag
// varints; the metric count as a uvarint, then each metric's name (uvarint
// length and bytes) and value (IEEE 754 bits, little-endian), sorted by name
// so that equal events encode equally. Every value round-trips, NaN payloads
// and negative zero included.
//
// A field added to Event must be added here, with a new version number;
// TestEventBinaryCoversEveryField fails until it is.

const eventBinaryVersion = 1

const (
	flagBuffered = 1 << iota
	flagKnown
	flagMetrics
)

// eventStrings lists the event's string fields in encoding order.
func eventStrings(e *Event) [12]*string {
	return [12]*string{
		&e.DeviceID, &e.Registry, &e.Location, &e.Project, &e.SubFolder, &e.MessageID,
		&e.DeviceClass, &e.SchemaID, &e.Enrichment.Site, &e.Enrichment.Location, &e.Enrichment.Owner, &e.AckID,
	}
}

// AppendEventBinary appends the binary form of e to b.
func AppendEventBinary(b []byte, e Event) []byte {
	strs := eventStrings(&e)
	// One exact allocation: sized before writing.
	size := 2 + varintSize(zigzag(e.TS)) + varintSize(zigzag(e.Seq)) + varintSize(zigzag(e.PublishMillis)) + varintSize(uint64(len(e.Metrics)))
	for _, s := range strs {
		size += varintSize(uint64(len(*s))) + len(*s)
	}
	metrics := e.Metrics.inOrder()
	for _, m := range metrics {
		size += varintSize(uint64(len(m.Name))) + len(m.Name) + 8
	}
	b = slices.Grow(b, size)

	var flags byte
	if e.Buffered {
		flags |= flagBuffered
	}
	if e.Enrichment.Known {
		flags |= flagKnown
	}
	if e.Metrics != nil {
		flags |= flagMetrics
	}
	b = append(b, eventBinaryVersion, flags)
	for _, s := range strs {
		b = binary.AppendUvarint(b, uint64(len(*s)))
		b = append(b, *s...)
	}
	b = binary.AppendVarint(b, e.TS)
	b = binary.AppendVarint(b, e.Seq)
	b = binary.AppendVarint(b, e.PublishMillis)
	b = binary.AppendUvarint(b, uint64(len(metrics)))
	for _, m := range metrics {
		b = binary.AppendUvarint(b, uint64(len(m.Name)))
		b = append(b, m.Name...)
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(m.Value))
	}
	return b
}

// varintSize is the length of x as a uvarint.
func varintSize(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// zigzag is x as binary.AppendVarint writes it, before the uvarint.
func zigzag(x int64) uint64 { return uint64(x<<1) ^ uint64(x>>63) }

var errEventTruncated = errors.New("truncated")

// DecodeEventBinary reads an event written by AppendEventBinary; data must
// hold exactly one. The event's strings share one copy of data, so decoding
// costs two allocations (that copy and the metrics) whatever the
// number of fields; the price is that any one string kept keeps that whole
// copy, a few hundred bytes, alive.
func DecodeEventBinary(data []byte) (Event, error) {
	return DecodeEventBinaryString(string(data))
}

// DecodeEventBinaryString is DecodeEventBinary reading from a string, with
// no copy: the event's strings are substrings of data, so the events of one
// batch decoded from substrings of one string share its one copy.
func DecodeEventBinaryString(data string) (Event, error) {
	var e Event
	if len(data) < 2 {
		return Event{}, fmt.Errorf("decoding event: %d bytes: %w", len(data), errEventTruncated)
	}
	if data[0] != eventBinaryVersion {
		return Event{}, fmt.Errorf("decoding event: version %d, want %d", data[0], eventBinaryVersion)
	}
	flags := data[1]
	if flags&^(flagBuffered|flagKnown|flagMetrics) != 0 {
		return Event{}, fmt.Errorf("decoding event: unknown flags %#x", flags)
	}
	e.Buffered = flags&flagBuffered != 0
	e.Enrichment.Known = flags&flagKnown != 0
	d := eventDecoder{s: data, pos: 2}
	for _, s := range eventStrings(&e) {
		*s = d.str()
	}
	e.TS, e.Seq, e.PublishMillis = d.varint(), d.varint(), d.varint()
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.s)-d.pos)/9 { // each metric takes at least 9 bytes
		d.err = fmt.Errorf("%d metrics in %d bytes: %w", n, len(d.s)-d.pos, errEventTruncated)
	}
	if d.err == nil && (n > 0 || flags&flagMetrics != 0) {
		if flags&flagMetrics == 0 {
			return Event{}, fmt.Errorf("decoding event: %d metrics in an event without metrics", n)
		}
		e.Metrics = make(Metrics, n)
		for i := range e.Metrics {
			if d.err != nil {
				break
			}
			e.Metrics[i] = Metric{d.str(), math.Float64frombits(d.uint64())}
		}
		if d.err == nil && !e.Metrics.sorted() {
			return Event{}, errors.New("decoding event: metric names repeat or are out of order")
		}
	}
	if d.err == nil && d.pos != len(d.s) {
		d.err = fmt.Errorf("%d bytes after the event", len(d.s)-d.pos)
	}
	if d.err != nil {
		return Event{}, fmt.Errorf("decoding event: %w", d.err)
	}
	return e, nil
}

// eventDecoder reads from s, a string copy of the encoded event, so that
// every string field is a substring of it; the first error sticks.
type eventDecoder struct {
	s   string
	pos int
	err error
}

func (d *eventDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	var x uint64
	for shift := uint(0); ; shift += 7 {
		if d.pos >= len(d.s) {
			d.err = errEventTruncated
			return 0
		}
		c := d.s[d.pos]
		d.pos++
		if shift == 63 && c > 1 {
			d.err = errors.New("varint overflows 64 bits")
			return 0
		}
		x |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return x
		}
	}
}

func (d *eventDecoder) varint() int64 {
	u := d.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (d *eventDecoder) str() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.s)-d.pos) {
		d.err = fmt.Errorf("string of %d bytes, %d left: %w", n, len(d.s)-d.pos, errEventTruncated)
		return ""
	}
	s := d.s[d.pos : d.pos+int(n)]
	d.pos += int(n)
	return s
}

func (d *eventDecoder) uint64() uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.s)-d.pos < 8 {
		d.err = errEventTruncated
		return 0
	}
	var x uint64
	for i := 7; i >= 0; i-- {
		x = x<<8 | uint64(d.s[d.pos+i])
	}
	d.pos += 8
	return x
}
