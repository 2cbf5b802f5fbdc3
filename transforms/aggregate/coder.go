package aggregate

import (
	"encoding/binary"
	"fmt"
	"math"
	"reflect"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
)

// Accumulators cross the grouping of every window with every reading they
// hold, where Beam's reflective row coder cost more than the summing
// itself. The functions get generated callers first (register.Function*),
// so the coder calls them without reflection.
func init() {
	register.Function1x1(encodeAccumulator)
	register.Function1x2(decodeAccumulator)
	beam.RegisterCoder(reflect.TypeOf((*Accumulator)(nil)).Elem(), encodeAccumulator, decodeAccumulator)
}

// encodeAccumulator is the Accumulator coder: the count of readings, then
// each reading's seq and TS as varint deltas from the reading before it
// (readings are sorted by seq, and their times mostly follow), its value's
// eight bytes and a Buffered byte.
func encodeAccumulator(a Accumulator) []byte {
	out := make([]byte, 0, binary.MaxVarintLen64+len(a.Readings)*(2*binary.MaxVarintLen64+9))
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

func decodeAccumulator(data []byte) (Accumulator, error) {
	n, k := binary.Uvarint(data)
	// A reading takes at least 11 bytes.
	if k <= 0 || n > uint64(len(data))/11 {
		return Accumulator{}, fmt.Errorf("aggregate: malformed accumulator: bad reading count")
	}
	data = data[k:]
	a := Accumulator{Readings: make([]Reading, n)}
	var seq, ts int64
	for i := range a.Readings {
		dseq, k1 := binary.Varint(data)
		if k1 <= 0 {
			return Accumulator{}, fmt.Errorf("aggregate: malformed accumulator: reading %d of %d: bad seq", i, n)
		}
		dts, k2 := binary.Varint(data[k1:])
		if k2 <= 0 || len(data) < k1+k2+9 {
			return Accumulator{}, fmt.Errorf("aggregate: malformed accumulator: reading %d of %d is cut short", i, n)
		}
		data = data[k1+k2:]
		if data[8] > 1 {
			return Accumulator{}, fmt.Errorf("aggregate: malformed accumulator: reading %d of %d: bad buffered flag %d", i, n, data[8])
		}
		seq, ts = seq+dseq, ts+dts
		a.Readings[i] = Reading{Seq: seq, TS: ts, Value: math.Float64frombits(binary.LittleEndian.Uint64(data)), Buffered: data[8] == 1}
		data = data[9:]
	}
	if len(data) != 0 {
		return Accumulator{}, fmt.Errorf("aggregate: malformed accumulator: %d bytes after the last reading", len(data))
	}
	return a, nil
}
