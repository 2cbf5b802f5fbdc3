package pubsubsource

import (
	"context"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
)

// flow is the in-process ledger of one subscription's outstanding messages:
// pulled by Read, not yet acknowledged by Ack. Read and Ack run in the
// process that launched the job (prism's loopback workers), so they share it.
//
// It does two jobs. Backpressure: Read pulls only while fewer than the
// configured number of messages are outstanding, so a backlog stays in
// Pub/Sub rather than in the runner's memory. Lease: messages outstanding
// for half their ack deadline get their deadline extended, so a slow
// pipeline is not handed the same messages again.
type flow struct {
	mu          sync.Mutex
	outstanding map[string]time.Time // lease expiry by ack id
	receipts    map[string]int       // receipts so far, of messages that need several
	leasing     bool
}

var flows sync.Map // subscription -> *flow

func flowOf(subscription string) *flow {
	f, _ := flows.LoadOrStore(subscription, &flow{outstanding: map[string]time.Time{}, receipts: map[string]int{}})
	return f.(*flow)
}

// ResetFlow forgets the outstanding messages of subscription, for a new job:
// a failed job's messages are never acked by it; Pub/Sub redelivers them once
// their lease runs out, and the new job counts them afresh.
func ResetFlow(subscription string) {
	f := flowOf(subscription)
	f.mu.Lock()
	f.outstanding = map[string]time.Time{}
	f.receipts = map[string]int{}
	f.mu.Unlock()
}

// arrived records one receipt of ackID and reports whether it was the last
// of the need it has.
func (f *flow) arrived(ackID string, need int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.receipts[ackID]++
	if f.receipts[ackID] < need {
		return false
	}
	delete(f.receipts, ackID)
	return true
}

func (f *flow) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.outstanding)
}

func (f *flow) add(ackIDs []string, expiry time.Time) {
	f.mu.Lock()
	for _, id := range ackIDs {
		f.outstanding[id] = expiry
	}
	f.mu.Unlock()
}

func (f *flow) done(ackIDs []string) {
	f.mu.Lock()
	for _, id := range ackIDs {
		delete(f.outstanding, id)
	}
	f.mu.Unlock()
}

// due returns the ack ids whose lease ends before horizon and marks them
// renewed until newExpiry.
func (f *flow) due(horizon, newExpiry time.Time) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id, exp := range f.outstanding {
		if exp.Before(horizon) {
			ids = append(ids, id)
			f.outstanding[id] = newExpiry
		}
	}
	return ids
}

// lease keeps extending the deadlines of outstanding messages until ctx ends.
// One lease loop runs per subscription per process.
func (f *flow) lease(ctx context.Context, subscription string, ackDeadline time.Duration, extend func(context.Context, *pubsubpb.ModifyAckDeadlineRequest) error) {
	f.mu.Lock()
	if f.leasing {
		f.mu.Unlock()
		return
	}
	f.leasing = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.leasing = false
		f.mu.Unlock()
	}()
	tick := time.NewTicker(ackDeadline / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			ids := f.due(now.Add(ackDeadline/2), now.Add(ackDeadline))
			for len(ids) > 0 {
				n := min(len(ids), maxAckIDsPerCall)
				// Best effort: a failed extension means a redelivery, which the
				// deduplication absorbs.
				_ = extend(ctx, &pubsubpb.ModifyAckDeadlineRequest{
					Subscription:       subscription,
					AckIds:             ids[:n],
					AckDeadlineSeconds: int32(ackDeadline / time.Second),
				})
				ids = ids[n:]
			}
		}
	}
}
