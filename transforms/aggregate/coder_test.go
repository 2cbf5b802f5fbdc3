package aggregate

import (
	"math"
	"reflect"
	"testing"
)

func TestPartialCoderRoundTrip(t *testing.T) {
	for _, p := range []Partial{
		{},
		{Metrics: []string{"temperature"}, Accs: []Accumulator{{Readings: []Reading{{TS: 1700000000000, Seq: 0, Value: 21.5}}}}},
		{Metrics: []string{"", "battery", "ünï"}, Accs: []Accumulator{
			{Readings: []Reading{{TS: 1, Seq: 1, Value: 1}}},
			{Readings: []Reading{
				{TS: 1700000000000, Seq: -5, Value: -1e300, Buffered: true},
				{TS: 1699999999000, Seq: 3, Value: math.Inf(1)},
				{TS: math.MaxInt64, Seq: math.MaxInt64, Value: math.SmallestNonzeroFloat64},
				{TS: math.MinInt64, Seq: math.MaxInt64, Value: 0, Buffered: true},
			}},
			{Readings: []Reading{}},
		}},
	} {
		got, err := decodePartial(encodePartial(p))
		if err != nil {
			t.Fatalf("decode(encode(%v)): %v", p, err)
		}
		if len(p.Metrics) == 0 && len(got.Metrics) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("decode(encode(%v)) = %v", p, got)
		}
	}
}

func TestPartialCoderRefusesMalformed(t *testing.T) {
	acc := Accumulator{Readings: []Reading{{TS: 1, Seq: 1, Value: 1}, {TS: 2, Seq: 2, Value: 2}}}
	good := encodePartial(Partial{Metrics: []string{"a", "b"}, Accs: []Accumulator{acc, acc}})
	for name, data := range map[string][]byte{
		"empty":            nil,
		"cut short":        good[:len(good)-1],
		"trailing bytes":   append(append([]byte{}, good...), 0),
		"huge count":       {0xff, 0xff, 0xff, 0xff, 0x0f},
		"huge name":        {1, 0xff, 0xff, 0x03, 'a'},
		"bad buffered":     append(append([]byte{}, good[:len(good)-1]...), 7),
		"names unsorted":   encodePartial(Partial{Metrics: []string{"b", "a"}, Accs: []Accumulator{acc, acc}}),
		"names repeated":   encodePartial(Partial{Metrics: []string{"a", "a"}, Accs: []Accumulator{acc, acc}}),
		"huge readings":    {1, 1, 'a', 0xff, 0xff, 0x03},
		"no accumulator":   {1, 1, 'a'},
		"second cut short": good[:len(good)-12],
	} {
		if _, err := decodePartial(data); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}
