package dedupe

import "sort"

// Run is a closed range of sequence numbers seen, and the newest event time
// among them.
type Run struct {
	Lo, Hi int64
	MaxTS  int64
}

// SeenSet is one device's seen sequence numbers as sorted, disjoint,
// non-adjacent runs. Devices count up, so a device's history is usually one
// run: memory per device stays constant however many readings it sends.
type SeenSet struct {
	Runs []Run
}

// Add records seq (with event time ts) and reports whether it was new.
// A false answer is exact: that seq was seen before.
func (s *SeenSet) Add(seq, ts int64) bool {
	runs := s.Runs
	// i is the first run whose Hi >= seq.
	i := sort.Search(len(runs), func(i int) bool { return runs[i].Hi >= seq })
	if i < len(runs) && runs[i].Lo <= seq {
		return false
	}
	joinPrev := i > 0 && runs[i-1].Hi+1 == seq
	joinNext := i < len(runs) && runs[i].Lo-1 == seq
	switch {
	case joinPrev && joinNext:
		runs[i-1].Hi = runs[i].Hi
		runs[i-1].MaxTS = max(runs[i-1].MaxTS, runs[i].MaxTS, ts)
		s.Runs = append(runs[:i], runs[i+1:]...)
	case joinPrev:
		runs[i-1].Hi = seq
		runs[i-1].MaxTS = max(runs[i-1].MaxTS, ts)
	case joinNext:
		runs[i].Lo = seq
		runs[i].MaxTS = max(runs[i].MaxTS, ts)
	default:
		runs = append(runs, Run{})
		copy(runs[i+1:], runs[i:])
		runs[i] = Run{Lo: seq, Hi: seq, MaxTS: ts}
		s.Runs = runs
	}
	return true
}

// Prune forgets runs whose newest event is older than minTS. A run that is
// still fresh keeps its older members too: remembering a seq longer than the
// horizon can only ever drop a true duplicate.
func (s *SeenSet) Prune(minTS int64) {
	kept := s.Runs[:0]
	for _, r := range s.Runs {
		if r.MaxTS >= minTS {
			kept = append(kept, r)
		}
	}
	s.Runs = kept
}

// NewestTS is the newest event time in the set (0 when empty).
func (s *SeenSet) NewestTS() int64 {
	var ts int64
	for _, r := range s.Runs {
		ts = max(ts, r.MaxTS)
	}
	return ts
}
