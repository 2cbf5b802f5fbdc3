package pubsubsource

import (
	"context"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/log"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
)

func init() {
	register.DoFn3x0[context.Context, Receipts, func(int)](&ackFn{})
	register.Emitter1[int]()
	register.DoFn3x0[beam.EventTime, string, func(beam.EventTime, Receipts)](&tagFn{})
	register.Emitter2[beam.EventTime, Receipts]()
}

// ReceiptGroup is the sinks one kind of message goes to: PCollections of
// Message.AckID, each emitting a receipt once its write is done. A message
// is done when every member of its group has handed back its receipt.
type ReceiptGroup []beam.PCollection

// Ack acknowledges, on subscription, each message once every sink of its
// group has handed back its receipt. Receipts are batched per bundle; an
// empty receipt (a message that did not come from Read) is skipped.
//
// The receipts of all sinks meet in one Flatten, which a runner may carry
// out itself (prism does), moving every element across its boundary; so they
// cross it as a bundle's Receipts, not one by one.
//
// Receipts of one message may arrive in different bundles: the count is kept
// in the process's ledger of the subscription (see flow), shared by every
// bundle of the job's in-process workers.
//
// It returns how many messages each bundle acknowledged (a PCollection of
// int, one per bundle that acknowledged any).
func Ack(s beam.Scope, subscription string, groups ...ReceiptGroup) beam.PCollection {
	s = s.Scope("pubsubsource.Ack")
	var all []beam.PCollection
	for _, g := range groups {
		for _, r := range g {
			all = append(all, beam.ParDo(s, &tagFn{Need: len(g)}, r))
		}
	}
	tagged := all[0]
	if len(all) > 1 {
		tagged = beam.Flatten(s, all...)
	}
	return beam.ParDo(s, &ackFn{Subscription: subscription}, tagged)
}

// Receipts are one sink's receipts from one bundle, and how many receipts
// each of their messages needs (the size of the sink's group).
type Receipts struct {
	Need   int
	AckIDs []string
}

// tagFn gathers a bundle's receipts of one sink into Receipts.
type tagFn struct {
	Need int

	batch  []string
	oldest beam.EventTime
}

func (fn *tagFn) ProcessElement(ts beam.EventTime, ackID string, emit func(beam.EventTime, Receipts)) {
	if ackID == "" {
		return
	}
	if len(fn.batch) == 0 || ts < fn.oldest {
		fn.oldest = ts
	}
	fn.batch = append(fn.batch, ackID)
	if len(fn.batch) >= maxAckIDsPerCall {
		fn.FinishBundle(emit)
	}
}

// FinishBundle emits the batch stamped with its oldest receipt's timestamp,
// so that it holds the watermark no further than they did.
func (fn *tagFn) FinishBundle(emit func(beam.EventTime, Receipts)) {
	if len(fn.batch) > 0 {
		emit(fn.oldest, Receipts{Need: fn.Need, AckIDs: fn.batch})
		fn.batch = nil // emit may keep the slice
	}
}

// maxAckIDsPerCall keeps one Acknowledge request well under Pub/Sub's 512 KiB.
const maxAckIDsPerCall = 2500

type ackFn struct {
	Subscription string

	client  *pubsub.Client
	pending []string
	done    int // acknowledged in this bundle
	acked   beam.Counter
	failed  beam.Counter
}

func (fn *ackFn) Setup(ctx context.Context) error {
	var err error
	if fn.client, err = newClient(ctx, fn.Subscription); err != nil {
		return err
	}
	fn.acked = beam.NewCounter("iotpipe.source", "messages_acked")
	fn.failed = beam.NewCounter("iotpipe.source", "ack_errors")
	return nil
}

func (fn *ackFn) Teardown() error {
	if fn.client == nil {
		return nil
	}
	return fn.client.Close()
}

func (fn *ackFn) StartBundle(_ context.Context, _ func(int)) { fn.pending, fn.done = fn.pending[:0], 0 }

func (fn *ackFn) ProcessElement(ctx context.Context, r Receipts, _ func(int)) {
	for _, ackID := range r.AckIDs {
		if r.Need > 1 && !flowOf(fn.Subscription).arrived(ackID, r.Need) {
			continue // other sinks of this message have not reported yet
		}
		fn.pending = append(fn.pending, ackID)
		if len(fn.pending) >= maxAckIDsPerCall {
			fn.flush(ctx)
		}
	}
}

func (fn *ackFn) FinishBundle(ctx context.Context, emit func(int)) {
	fn.flush(ctx)
	if fn.done > 0 {
		emit(fn.done)
	}
}

// flush acknowledges the pending receipts. A failed ack fails nothing: the
// data is written, the message is redelivered, and the idempotent sinks and
// the deduplication absorb the repeat.
func (fn *ackFn) flush(ctx context.Context) {
	if len(fn.pending) == 0 {
		return
	}
	if err := fn.client.SubscriptionAdminClient.Acknowledge(ctx, &pubsubpb.AcknowledgeRequest{
		Subscription: fn.Subscription,
		AckIds:       fn.pending,
	}); err != nil {
		fn.failed.Inc(ctx, 1)
		log.Warnf(ctx, "pubsubsource: ack %d messages on %s: %v (they will be redelivered)", len(fn.pending), fn.Subscription, err)
	} else {
		fn.acked.Inc(ctx, int64(len(fn.pending)))
		fn.done += len(fn.pending)
	}
	flowOf(fn.Subscription).done(fn.pending)
	fn.pending = fn.pending[:0]
}
