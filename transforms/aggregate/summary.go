package aggregate

import (
	"cmp"
	"math"
	"slices"
	"sort"
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
// window. Its zero value is the empty summary. It keeps the readings
// themselves, one per seq, sorted by seq, so that partial summaries which
// saw the same reading (a device retry, a redelivery, a replayed buffer)
// merge into one that counts it once: the summary is exact whatever
// duplicates reach it and in whatever order, and equal inputs give equal
// sums (they are added in seq order). Its fields are exported for the coder.
type Accumulator struct {
	Readings []Reading
}

// Add folds one reading in. Of two readings with one seq, the one preferred
// (see preferred) stays.
func (a *Accumulator) Add(r Reading) {
	n := len(a.Readings)
	if n == 0 || r.Seq > a.Readings[n-1].Seq { // readings mostly arrive in seq order
		a.Readings = append(a.Readings, r)
		return
	}
	i, found := slices.BinarySearchFunc(a.Readings, r.Seq, func(x Reading, seq int64) int { return cmp.Compare(x.Seq, seq) })
	if found {
		if preferred(r, a.Readings[i]) {
			a.Readings[i] = r
		}
		return
	}
	a.Readings = slices.Insert(a.Readings, i, r)
}

// Merge folds another accumulator of the same device, metric and window in.
func (a *Accumulator) Merge(b Accumulator) {
	switch {
	case len(b.Readings) == 0:
		return
	case len(a.Readings) == 0:
		a.Readings = slices.Clone(b.Readings)
		return
	case b.Readings[0].Seq > a.Readings[len(a.Readings)-1].Seq:
		a.Readings = append(a.Readings, b.Readings...)
		return
	}
	x, y := a.Readings, b.Readings
	out := make([]Reading, 0, len(x)+len(y))
	for len(x) > 0 && len(y) > 0 {
		switch {
		case x[0].Seq < y[0].Seq:
			out, x = append(out, x[0]), x[1:]
		case y[0].Seq < x[0].Seq:
			out, y = append(out, y[0]), y[1:]
		default:
			if preferred(y[0], x[0]) {
				out = append(out, y[0])
			} else {
				out = append(out, x[0])
			}
			x, y = x[1:], y[1:]
		}
	}
	a.Readings = append(append(out, x...), y...)
}

// preferred orders two copies of one (device, seq) so that which one a
// summary keeps does not depend on arrival order: the earlier ts, then the
// one not buffered, then the smaller value bits.
func preferred(r, than Reading) bool {
	if r.TS != than.TS {
		return r.TS < than.TS
	}
	if r.Buffered != than.Buffered {
		return !r.Buffered
	}
	return math.Float64bits(r.Value) < math.Float64bits(than.Value)
}

// later orders readings by (ts, seq): the greatest is the window's last value.
func later(ts, seq, thanTS, thanSeq int64) bool {
	return ts > thanTS || ts == thanTS && seq > thanSeq
}

// Result is the accumulator as an Aggregate without identity, window or
// pane: those come from the key, the window and the pane of the firing.
func (a Accumulator) Result() schemas.Aggregate {
	var out schemas.Aggregate
	var lastSeq int64
	for i, r := range a.Readings {
		if i == 0 || r.Value < out.Min {
			out.Min = r.Value
		}
		if i == 0 || r.Value > out.Max {
			out.Max = r.Value
		}
		if i == 0 || later(r.TS, r.Seq, out.LastTS, lastSeq) {
			out.Last, out.LastTS, lastSeq = r.Value, r.TS, r.Seq
		}
		out.Sum += r.Value
		out.Buffered = out.Buffered || r.Buffered
	}
	out.Count = int64(len(a.Readings))
	if out.Count > 0 {
		out.Mean = out.Sum / float64(out.Count)
	}
	return out
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

// Partial is the running summaries of one device's metrics in one window:
// the unit PerMinute groups, so a reading crosses the grouping once
// whatever number of metrics it carries. Metrics is sorted, and Accs[i]
// summarizes Metrics[i]. Its zero value is the empty partial; its fields
// are exported for the coder.
type Partial struct {
	Metrics []string
	Accs    []Accumulator
}

// Add folds every metric of e in.
func (p *Partial) Add(e schemas.Event) {
	for _, m := range e.Metrics {
		p.acc(m.Name).Add(Reading{TS: e.TS, Seq: e.Seq, Value: m.Value, Buffered: e.Buffered})
	}
}

// Merge folds another partial of the same device and window in.
func (p *Partial) Merge(q Partial) {
	for i, name := range q.Metrics {
		p.acc(name).Merge(q.Accs[i])
	}
}

// acc is the accumulator of metric name, added empty if p has none yet.
func (p *Partial) acc(name string) *Accumulator {
	i, found := slices.BinarySearch(p.Metrics, name)
	if !found {
		p.Metrics = slices.Insert(p.Metrics, i, name)
		p.Accs = slices.Insert(p.Accs, i, Accumulator{})
	}
	return &p.Accs[i]
}

// appendAggregates appends p's aggregates, one per metric in name order,
// with device and window filled in and no pane.
func (p Partial) appendAggregates(out []schemas.Aggregate, device string, start, end int64) []schemas.Aggregate {
	for i, metric := range p.Metrics {
		agg := p.Accs[i].Result()
		agg.DeviceID, agg.Metric = device, metric
		agg.WindowStart, agg.WindowEnd = start, end
		out = append(out, agg)
	}
	return out
}

// Summary folds events into per (device, metric, window) summaries without
// Beam: the plain-Go core of PerMinute over bounded, on-time data, used as
// the benchmark kernel and as the oracle in tests.
type Summary struct {
	size     int64
	partials map[summaryKey]*Partial
}

type summaryKey struct {
	device string
	start  int64
}

// NewSummary returns an empty Summary with windows of length window
// (whole milliseconds, > 0).
func NewSummary(window time.Duration) *Summary {
	return &Summary{size: window.Milliseconds(), partials: map[summaryKey]*Partial{}}
}

// Add folds every metric of e into its window.
func (s *Summary) Add(e schemas.Event) {
	k := summaryKey{e.DeviceID, windowStart(e.TS, s.size)}
	p := s.partials[k]
	if p == nil {
		p = &Partial{}
		s.partials[k] = p
	}
	p.Add(e)
}

// Aggregates returns one Aggregate per (device, metric, window), ordered by
// device, metric and window start.
func (s *Summary) Aggregates() []schemas.Aggregate {
	var out []schemas.Aggregate
	for k, p := range s.partials {
		out = p.appendAggregates(out, k.device, k.start, k.start+s.size)
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
