package aggregate

import (
	"math"
	"reflect"
	"testing"
)

func TestAccumulatorCoderRoundTrip(t *testing.T) {
	for _, a := range []Accumulator{
		{},
		{Readings: []Reading{{TS: 1700000000000, Seq: 0, Value: 21.5}}},
		{Readings: []Reading{
			{TS: 1700000000000, Seq: -5, Value: -1e300, Buffered: true},
			{TS: 1699999999000, Seq: 3, Value: math.Inf(1)},
			{TS: math.MaxInt64, Seq: math.MaxInt64, Value: math.SmallestNonzeroFloat64},
			{TS: math.MinInt64, Seq: math.MaxInt64, Value: 0, Buffered: true},
		}},
	} {
		got, err := decodeAccumulator(encodeAccumulator(a))
		if err != nil {
			t.Fatalf("decode(encode(%v)): %v", a, err)
		}
		if len(a.Readings) == 0 && len(got.Readings) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, a) {
			t.Errorf("decode(encode(%v)) = %v", a, got)
		}
	}
}

func TestAccumulatorCoderRefusesMalformed(t *testing.T) {
	good := encodeAccumulator(Accumulator{Readings: []Reading{{TS: 1, Seq: 1, Value: 1}, {TS: 2, Seq: 2, Value: 2}}})
	for name, data := range map[string][]byte{
		"empty":          nil,
		"cut short":      good[:len(good)-1],
		"trailing bytes": append(append([]byte{}, good...), 0),
		"huge count":     {0xff, 0xff, 0xff, 0xff, 0x0f},
		"bad buffered":   append(append([]byte{}, good[:len(good)-1]...), 7),
	} {
		if _, err := decodeAccumulator(data); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}
