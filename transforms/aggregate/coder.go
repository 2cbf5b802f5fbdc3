package aggregate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
)

// Partials cross the grouping of every window with every reading they
// hold, where Beam's reflective row coder cost more than the summing
// itself. The functions get generated callers first (register.Function*),
// so the coder calls them without reflection.
func init() {
	register.Function1x1(encodePartial)
	register.Function1x2(decodePartial)
	beam.RegisterCoder(reflect.TypeOf((*Partial)(nil)).Elem(), encodePartial, decodePartial)
}

// A reading takes at least 11 bytes: two one-byte varints, the value's
// eight bytes and the Buffered byte.
const minReadingBytes = 11

// encodePartial is the Partial coder: the count of metrics, then each
// metric's name (length first) and accumulator (appendAccumulator).
func encodePartial(p Partial) []byte {
	size := binary.MaxVarintLen64
	for i, name := range p.Metrics {
		size += 2*binary.MaxVarintLen64 + len(name) + len(p.Accs[i].Readings)*(2*binary.MaxVarintLen64+9)
	}
	out := binary.AppendUvarint(make([]byte, 0, size), uint64(len(p.Metrics)))
	for i, name := range p.Metrics {
		out = binary.AppendUvarint(out, uint64(len(name)))
		out = append(out, name...)
		out = appendAccumulator(out, p.Accs[i])
	}
	return out
}

func decodePartial(data []byte) (Partial, error) {
	n, k := binary.Uvarint(data)
	// A metric takes at least two bytes: its name's length and its count.
	if k <= 0 || n > uint64(len(data)-k)/2 {
		return Partial{}, errors.New("aggregate: malformed partial: bad metric count")
	}
	data = data[k:]
	p := Partial{Metrics: make([]string, n), Accs: make([]Accumulator, n)}
	for i := range p.Metrics {
		size, k := binary.Uvarint(data)
		if k <= 0 || size > uint64(len(data)-k) {
			return Partial{}, fmt.Errorf("aggregate: malformed partial: metric %d of %d: name cut short", i+1, n)
		}
		p.Metrics[i] = string(data[k : k+int(size)])
		if i > 0 && p.Metrics[i] <= p.Metrics[i-1] {
			return Partial{}, fmt.Errorf("aggregate: malformed partial: metric %q after %q, want names in increasing order", p.Metrics[i], p.Metrics[i-1])
		}
		var err error
		if p.Accs[i], data, err = readAccumulator(data[k+int(size):]); err != nil {
			return Partial{}, fmt.Errorf("aggregate: malformed partial: metric %q: %w", p.Metrics[i], err)
		}
	}
	if len(data) != 0 {
		return Partial{}, fmt.Errorf("aggregate: malformed partial: %d bytes after the last metric", len(data))
	}
	return p, nil
}

// appendAccumulator appends a's coded form: the count of readings, then
// each reading's seq and TS as varint deltas from the reading before it
// (readings are sorted by seq, and their times mostly follow), its value's
// eight bytes and a Buffered byte.
func appendAccumulator(out []byte, a Accumulator) []byte {
	out = binary.AppendUvarint(out, uint64(len(a.Readings)))
	var seq, ts int64
	for _, r := range a.Readings {
		out = binary.AppendVarint(out, r.Seq-seq)
		out = binary.AppendVarint(out, r.TS-ts)
		out = binary.LittleEndian.AppendUint64(out, math.Float64bits(r.Value))
		var buffered byte
		if r.Buffered {
			buffered = 1
		}
		out = append(out, buffered)
		seq, ts = r.Seq, r.TS
	}
	return out
}

// readAccumulator reads one accumulator appendAccumulator wrote at the
// start of data and returns it and the bytes after it.
func readAccumulator(data []byte) (Accumulator, []byte, error) {
	n, k := binary.Uvarint(data)
	if k <= 0 || n > uint64(len(data)-k)/minReadingBytes {
		return Accumulator{}, nil, errors.New("bad reading count")
	}
	data = data[k:]
	a := Accumulator{Readings: make([]Reading, n)}
	var seq, ts int64
	for i := range a.Readings {
		dseq, k1 := binary.Varint(data)
		if k1 <= 0 {
			return Accumulator{}, nil, fmt.Errorf("reading %d of %d: bad seq", i+1, n)
		}
		dts, k2 := binary.Varint(data[k1:])
		if k2 <= 0 || len(data) < k1+k2+9 {
			return Accumulator{}, nil, fmt.Errorf("reading %d of %d is cut short", i+1, n)
		}
		data = data[k1+k2:]
		if data[8] > 1 {
			return Accumulator{}, nil, fmt.Errorf("reading %d of %d: bad buffered flag %d", i+1, n, data[8])
		}
		seq, ts = seq+dseq, ts+dts
		a.Readings[i] = Reading{Seq: seq, TS: ts, Value: math.Float64frombits(binary.LittleEndian.Uint64(data)), Buffered: data[8] == 1}
		data = data[9:]
	}
	return a, data, nil
}
