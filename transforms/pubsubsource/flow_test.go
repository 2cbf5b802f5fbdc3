package pubsubsource

import (
	"testing"
	"time"
)

// A message that goes to two sinks is done only with both receipts, in
// whatever order and bundle they come.
func TestArrivedNeedsEveryReceipt(t *testing.T) {
	f := flowOf("projects/p/subscriptions/arrived")
	if f.arrived("a", 2) {
		t.Fatal("done after one of two receipts")
	}
	if f.arrived("b", 2) {
		t.Fatal("another message's receipt completed the first")
	}
	if !f.arrived("a", 2) {
		t.Fatal("not done after both receipts")
	}
	if f.arrived("a", 2) {
		t.Fatal("a third receipt of a finished message started it over as done")
	}
	ResetFlow("projects/p/subscriptions/arrived")
	if f.arrived("b", 2) {
		t.Fatal("a receipt from before the reset still counted")
	}
}

func TestOutstandingAndLease(t *testing.T) {
	f := flowOf("projects/p/subscriptions/lease")
	now := time.Now()
	f.add([]string{"x", "y"}, now.Add(time.Second))
	if f.count() != 2 {
		t.Fatalf("count = %d, want 2", f.count())
	}
	due := f.due(now.Add(2*time.Second), now.Add(time.Minute))
	if len(due) != 2 {
		t.Fatalf("due = %v, want both leases", due)
	}
	if again := f.due(now.Add(2*time.Second), now.Add(time.Minute)); len(again) != 0 {
		t.Fatalf("renewed leases due again: %v", again)
	}
	f.done([]string{"x"})
	if f.count() != 1 {
		t.Fatalf("count after done = %d, want 1", f.count())
	}
}
