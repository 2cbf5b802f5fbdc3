package aggregate

import (
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/schemas"
)

// Reading is one metric value of one event: the unit the combine folds.
type Reading struct {
	TS       int64
	Seq      int64
	Value    float64
	Buffered bool
}

// Accumulator is the running summary of one metric of one device in one
// window. Its zero value is the empty summary. It is the CombineFn's
// accumulator, so its fields are exported for the coder.
type Accumulator struct {
	Count    int64
	Min      float64
	Max      float64
	Sum      float64
	Last     float64
	LastTS   int64
	LastSeq  int64
	Buffered bool
}

// Add folds one reading in.
func (a *Accumulator) Add(r Reading) {
	if a.Count == 0 || r.Value < a.Min {
		a.Min = r.Value
	}
	if a.Count == 0 || r.Value > a.Max {
		a.Max = r.Value
	}
	if a.Count == 0 || later(r.TS, r.Seq, a.LastTS, a.LastSeq) {
		a.Last, a.LastTS, a.LastSeq = r.Value, r.TS, r.Seq
	}
	a.Count++
	a.Sum += r.Value
	a.Buffered = a.Buffered || r.Buffered
}

// Merge folds another accumulator of the same device, metric and window in.
func (a *Accumulator) Merge(b Accumulator) {
	switch {
	case b.Count == 0:
		return
	case a.Count == 0:
		*a = b
		return
	}
	a.Min = min(a.Min, b.Min)
	a.Max = max(a.Max, b.Max)
	if later(b.LastTS, b.LastSeq, a.LastTS, a.LastSeq) {
		a.Last, a.LastTS, a.LastSeq = b.Last, b.LastTS, b.LastSeq
	}
	a.Count += b.Count
	a.Sum += b.Sum
	a.Buffered = a.Buffered || b.Buffered
}

// later orders readings by (ts, seq): the greatest is the window's last value.
func later(ts, seq, thanTS, thanSeq int64) bool {
	return ts > thanTS || ts == thanTS && seq > thanSeq
}

// Result is the accumulator as an Aggregate without identity, window or
// pane: those come from the key, the window and the pane of the firing.
func (a Accumulator) Result() schemas.Aggregate {
	out := schemas.Aggregate{
		Count:    a.Count,
		Min:      a.Min,
		Max:      a.Max,
		Sum:      a.Sum,
		Last:     a.Last,
		LastTS:   a.LastTS,
		Buffered: a.Buffered,
	}
	if a.Count > 0 {
		out.Mean = a.Sum / float64(a.Count)
	}
	return out
}

// groupKey is the combine key of a device's metric. The length prefix makes
// it injective whatever characters the two names hold.
func groupKey(device, metric string) string {
	return strconv.Itoa(len(device)) + "/" + device + metric
}

// splitKey reverses groupKey.
func splitKey(k string) (device, metric string, ok bool) {
	n, rest, ok := strings.Cut(k, "/")
	if !ok {
		return "", "", false
	}
	l, err := strconv.Atoi(n)
	if err != nil || l < 0 || l > len(rest) {
		return "", "", false
	}
	return rest[:l], rest[l:], true
}

// windowStart is the start of the fixed window of length size (ms, > 0)
// holding ts, aligned to the Unix epoch as Beam's FixedWindows are.
func windowStart(ts, size int64) int64 {
	r := ts % size
	if r < 0 {
		r += size
	}
	return ts - r
}

// Summary folds events into per (device, metric, window) summaries without
// Beam: the plain-Go core of PerMinute over bounded, on-time data, used as
// the benchmark kernel and as the oracle in tests.
type Summary struct {
	size int64
	accs map[summaryKey]*Accumulator
}

type summaryKey struct {
	device, metric string
	start          int64
}

// NewSummary returns an empty Summary with windows of length window
// (whole milliseconds, > 0).
func NewSummary(window time.Duration) *Summary {
	return &Summary{size: window.Milliseconds(), accs: map[summaryKey]*Accumulator{}}
}

// Add folds every metric of e into its window.
func (s *Summary) Add(e schemas.Event) {
	start := windowStart(e.TS, s.size)
	for name, v := range e.Metrics {
		k := summaryKey{e.DeviceID, name, start}
		a := s.accs[k]
		if a == nil {
			a = &Accumulator{}
			s.accs[k] = a
		}
		a.Add(Reading{TS: e.TS, Seq: e.Seq, Value: v, Buffered: e.Buffered})
	}
}

// Aggregates returns one Aggregate per (device, metric, window), ordered by
// device, metric and window start.
func (s *Summary) Aggregates() []schemas.Aggregate {
	out := make([]schemas.Aggregate, 0, len(s.accs))
	for k, a := range s.accs {
		agg := a.Result()
		agg.DeviceID, agg.Metric = k.device, k.metric
		agg.WindowStart, agg.WindowEnd = k.start, k.start+s.size
		out = append(out, agg)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.DeviceID != b.DeviceID {
			return a.DeviceID < b.DeviceID
		}
		if a.Metric != b.Metric {
			return a.Metric < b.Metric
		}
		return a.WindowStart < b.WindowStart
	})
	return out
}
