package dedupe

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/iotpipe/iotpipe/schemas"
)

func TestSeenSetAdd(t *testing.T) {
	tests := []struct {
		name     string
		seqs     []int64
		wantNew  []bool
		wantRuns []Run
	}{
		{"in order merges into one run", []int64{1, 2, 3}, []bool{true, true, true}, []Run{{1, 3, 0}}},
		{"repeat is a duplicate", []int64{5, 5}, []bool{true, false}, []Run{{5, 5, 0}}},
		{"gap keeps two runs", []int64{1, 3}, []bool{true, true}, []Run{{1, 1, 0}, {3, 3, 0}}},
		{"filling the gap joins both", []int64{1, 3, 2}, []bool{true, true, true}, []Run{{1, 3, 0}}},
		{"descending merges", []int64{9, 8, 7}, []bool{true, true, true}, []Run{{7, 9, 0}}},
		{"inside an existing run", []int64{1, 2, 3, 4, 2}, []bool{true, true, true, true, false}, []Run{{1, 4, 0}}},
		{"zero is a valid seq", []int64{0, 1, 0}, []bool{true, true, false}, []Run{{0, 1, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s SeenSet
			for i, q := range tt.seqs {
				if got := s.Add(q, 0); got != tt.wantNew[i] {
					t.Fatalf("Add(%d) #%d = %v, want %v (runs %v)", q, i, got, tt.wantNew[i], s.Runs)
				}
			}
			if len(s.Runs) != len(tt.wantRuns) {
				t.Fatalf("runs = %v, want %v", s.Runs, tt.wantRuns)
			}
			for i := range s.Runs {
				if s.Runs[i] != tt.wantRuns[i] {
					t.Fatalf("runs = %v, want %v", s.Runs, tt.wantRuns)
				}
			}
		})
	}
}

// The seen-set must agree exactly with a plain map on any sequence of seqs:
// no false positives, no false negatives.
func TestSeenSetMatchesMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 200; trial++ {
		var s SeenSet
		m := map[int64]bool{}
		for i := 0; i < 500; i++ {
			q := r.Int64N(300)
			if got, want := s.Add(q, 0), !m[q]; got != want {
				t.Fatalf("trial %d: Add(%d) = %v, map says new=%v", trial, q, got, want)
			}
			m[q] = true
		}
		for i := 1; i < len(s.Runs); i++ {
			if s.Runs[i-1].Hi+1 >= s.Runs[i].Lo {
				t.Fatalf("runs not disjoint and merged: %v", s.Runs)
			}
		}
	}
}

func TestPruneForgetsOnlyStaleRuns(t *testing.T) {
	var s SeenSet
	s.Add(1, 100)
	s.Add(10, 5000)
	s.Prune(1000)
	if !s.Add(1, 6000) {
		t.Error("seq 1 (event time 100) should be forgotten after pruning at 1000")
	}
	if s.Add(10, 6000) {
		t.Error("seq 10 (event time 5000) must still be remembered")
	}
}

func TestFilterKeepsFirstOfEachIdentity(t *testing.T) {
	var s SeenSet
	batch := []schemas.Event{{DeviceID: "d", Seq: 2, TS: 20}, {DeviceID: "d", Seq: 1, TS: 10}, {DeviceID: "d", Seq: 2, TS: 20}}
	kept, dups := Filter(&s, batch, 1000)
	if len(kept) != 2 || len(dups) != 1 || kept[0].Seq != 1 || kept[1].Seq != 2 {
		t.Fatalf("Filter = %v, %v repeats; want seqs [1 2] and 1 repeat", kept, dups)
	}
	kept, dups = Filter(&s, []schemas.Event{{DeviceID: "d", Seq: 1, TS: 10}, {DeviceID: "d", Seq: 3, TS: 30}}, 1000)
	if len(kept) != 1 || kept[0].Seq != 3 || len(dups) != 1 {
		t.Fatalf("second batch = %v, %v repeats; want only seq 3", kept, dups)
	}
}

// Devices of one shard keep separate seen-sets: the same seq of two
// devices is two readings; a device quiet for a horizon is forgotten.
func TestFilterShard(t *testing.T) {
	var st ShardSeen
	batch := []schemas.Event{
		{DeviceID: "b", Seq: 1, TS: 10, AckID: "b1"}, {DeviceID: "a", Seq: 1, TS: 10, AckID: "a1"},
		{DeviceID: "b", Seq: 1, TS: 10, AckID: "b1-again"}, {DeviceID: "a", Seq: 2, TS: 20, AckID: "a2"},
	}
	kept, dups := FilterShard(&st, batch, 1000)
	var got []string
	for _, e := range kept {
		got = append(got, e.AckID)
	}
	if fmt.Sprint(got) != "[a1 a2 b1]" || fmt.Sprint(dups) != "[b1-again]" {
		t.Fatalf("FilterShard = %v, repeats %v; want [a1 a2 b1], repeats [b1-again]", got, dups)
	}
	if len(st.Devices) != 2 || st.Devices[0].Device != "a" || st.Devices[1].Device != "b" {
		t.Fatalf("state = %+v, want devices a and b in order", st.Devices)
	}
	// b moves on by more than the horizon: a, quiet, is forgotten, and its
	// old seq passes again, as anything older than the horizon does.
	kept, dups = FilterShard(&st, []schemas.Event{{DeviceID: "b", Seq: 2, TS: 5000}}, 1000)
	if len(kept) != 1 || len(dups) != 0 || len(st.Devices) != 1 || st.Devices[0].Device != "b" {
		t.Fatalf("after b moved on: kept %v, repeats %v, state %+v; want b's reading kept and only b remembered", kept, dups, st.Devices)
	}
}

// BenchmarkSeenSetAdd is dedupe's plain-Go core: one seen-set per device,
// 1,000 devices counting up, every 10th reading a repeat.
func BenchmarkSeenSetAdd(b *testing.B) {
	sets := make([]SeenSet, 1000)
	dups := 0
	for i := 0; i < b.N; i++ {
		j := i
		if j%10 == 9 {
			j--
		}
		if !sets[j%1000].Add(int64(j/1000), int64(j)) {
			dups++
		}
	}
	if b.N >= 10 && dups == 0 {
		b.Fatal("no repeat was caught")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
