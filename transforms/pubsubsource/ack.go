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
	register.DoFn2x0[context.Context, string](&ackFn{})
}

// Ack acknowledges, on subscription, the receipts (PCollections of
// Message.AckID) that the pipeline's sinks emit once a message's data is
// written. Receipts are batched per bundle. An empty receipt (a message that
// did not come from Read) is skipped.
func Ack(s beam.Scope, subscription string, receipts ...beam.PCollection) {
	s = s.Scope("pubsubsource.Ack")
	all := receipts[0]
	if len(receipts) > 1 {
		all = beam.Flatten(s, receipts...)
	}
	beam.ParDo0(s, &ackFn{Subscription: subscription}, all)
}

// maxAckIDsPerCall keeps one Acknowledge request well under Pub/Sub's 512 KiB.
const maxAckIDsPerCall = 2500

type ackFn struct {
	Subscription string

	client  *pubsub.Client
	pending []string
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

func (fn *ackFn) StartBundle(context.Context) { fn.pending = fn.pending[:0] }

func (fn *ackFn) ProcessElement(ctx context.Context, ackID string) {
	if ackID == "" {
		return
	}
	fn.pending = append(fn.pending, ackID)
	if len(fn.pending) >= maxAckIDsPerCall {
		fn.flush(ctx)
	}
}

func (fn *ackFn) FinishBundle(ctx context.Context) { fn.flush(ctx) }

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
	}
	flowOf(fn.Subscription).done(fn.pending)
	fn.pending = fn.pending[:0]
}
