// Package pubsubsource reads a Pub/Sub subscription as an unbounded PCollection
// on runners without a native Pub/Sub read (prism): acks after the runner commits.
package pubsubsource

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/sdf"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/log"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
)

func init() {
	register.DoFn5x2[context.Context, *watermarkEstimator, *sdf.LockRTracker, []byte,
		func(beam.EventTime, Message), sdf.ProcessContinuation, error](&readFn{})
	register.Emitter2[beam.EventTime, Message]()
	beam.RegisterType(reflect.TypeOf((*Message)(nil)).Elem())
}

// Message is one Pub/Sub message as the pipeline sees it.
type Message struct {
	ID            string
	Data          []byte
	Attributes    map[string]string
	PublishMillis int64
	// AckID is the receipt the pipeline hands back to Ack once everything
	// the message became is written.
	AckID string
}

// Config says what to read and how.
type Config struct {
	// Subscription is the full path projects/{project}/subscriptions/{id}.
	Subscription string
	// MaxMessages is the most messages one pull asks for (default 1000).
	MaxMessages int
	// PollInterval is how long the reader waits before pulling again after an
	// empty pull (default 20 ms). It bounds the added latency when idle.
	PollInterval time.Duration
	// MaxOutstanding bounds the messages pulled and not yet acknowledged
	// (default 20,000): past it the reader stops pulling until Ack catches
	// up, so a backlog waits in Pub/Sub, not in memory.
	MaxOutstanding int
	// AckDeadline is the lease the reader keeps extending for messages still
	// in the pipeline (default 30 s).
	AckDeadline time.Duration
}

// Read returns the messages of cfg.Subscription as an unbounded PCollection
// of Message, each timestamped with its publish time.
//
// Read does not acknowledge: each Message carries its AckID, and the
// pipeline passes the receipts to Ack only after its sinks wrote what the
// message became. Acking on the read side once the runner committed would
// be right on a runner with durable state (Dataflow acks that way), but
// prism keeps state in memory: a message acked there and lost with a failed
// or killed job would be gone. Acked at the sinks, an unwritten message is
// always redelivered.
//
// The watermark follows the data: while pulls come back full (a backlog),
// it stays at the oldest publish time just read; only when a pull comes back
// short, meaning the reader has caught up, does it move to the time of that
// pull. It never runs ahead of messages still waiting in the subscription
// in publish order.
func Read(s beam.Scope, cfg Config) beam.PCollection {
	s = s.Scope("pubsubsource.Read")
	if cfg.MaxMessages <= 0 {
		cfg.MaxMessages = 1000
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	if cfg.MaxOutstanding <= 0 {
		cfg.MaxOutstanding = 20_000
	}
	if cfg.AckDeadline < 10*time.Second {
		cfg.AckDeadline = 30 * time.Second
	}
	imp := beam.Impulse(s)
	return beam.ParDo(s, &readFn{
		Subscription:      cfg.Subscription,
		MaxMessages:       int32(cfg.MaxMessages),
		PollMillis:        cfg.PollInterval.Milliseconds(),
		MaxOutstanding:    cfg.MaxOutstanding,
		AckDeadlineMillis: cfg.AckDeadline.Milliseconds(),
	}, imp)
}

// ValidateSubscription checks the form projects/{project}/subscriptions/{id}
// and returns the project.
func ValidateSubscription(sub string) (project string, err error) {
	parts := strings.Split(sub, "/")
	if len(parts) != 4 || parts[0] != "projects" || parts[2] != "subscriptions" || parts[1] == "" || parts[3] == "" {
		return "", fmt.Errorf("subscription %q is not of the form projects/{project}/subscriptions/{id}", sub)
	}
	return parts[1], nil
}

// drains holds the subscriptions whose readers in this process were asked to finish.
var drains sync.Map

// Drain asks every reader of subscription running in this process (prism's
// loopback workers run in the launching process) to finish: each stops
// pulling, its last bundle commits and acks, and its output watermark goes to
// the end of time, so windows close and the job ends with nothing in flight.
func Drain(subscription string) { drains.Store(subscription, true) }

// Undrain clears a Drain, so a new job on the same subscription reads again.
func Undrain(subscription string) { drains.Delete(subscription) }

func draining(subscription string) bool {
	_, ok := drains.Load(subscription)
	return ok
}

type readFn struct {
	Subscription      string
	MaxMessages       int32
	PollMillis        int64
	MaxOutstanding    int
	AckDeadlineMillis int64

	client    *pubsub.Client
	flow      *flow
	stopLease context.CancelFunc
	received  beam.Counter
	pullErrs  beam.Counter
	throttled beam.Counter
}

// newClient connects to the project of subscription; pubsub.NewClient
// honours PUBSUB_EMULATOR_HOST.
func newClient(ctx context.Context, subscription string) (*pubsub.Client, error) {
	project, err := ValidateSubscription(subscription)
	if err != nil {
		return nil, err
	}
	c, err := pubsub.NewClient(ctx, project)
	if err != nil {
		return nil, fmt.Errorf("pubsub client for %s: %w", subscription, err)
	}
	return c, nil
}

func (fn *readFn) Setup(ctx context.Context) error {
	var err error
	if fn.client, err = newClient(ctx, fn.Subscription); err != nil {
		return err
	}
	fn.received = beam.NewCounter("iotpipe.source", "messages_received")
	fn.pullErrs = beam.NewCounter("iotpipe.source", "pull_errors")
	fn.throttled = beam.NewCounter("iotpipe.source", "pulls_held_back")
	fn.flow = flowOf(fn.Subscription)
	leaseCtx, stop := context.WithCancel(context.Background())
	fn.stopLease = stop
	go fn.flow.lease(leaseCtx, fn.Subscription, fn.ackDeadline(), func(ctx context.Context, req *pubsubpb.ModifyAckDeadlineRequest) error {
		return fn.client.SubscriptionAdminClient.ModifyAckDeadline(ctx, req)
	})
	return nil
}

func (fn *readFn) Teardown() error {
	if fn.stopLease != nil {
		fn.stopLease()
	}
	if fn.client == nil {
		return nil
	}
	return fn.client.Close()
}

// The restriction counts pulls that returned messages and carries the ack
// ids of the last bundle (see Restriction).
func (fn *readFn) CreateInitialRestriction(_ []byte) Restriction {
	return Restriction{}
}

func (fn *readFn) SplitRestriction(_ []byte, rest Restriction) []Restriction {
	return []Restriction{rest}
}

func (fn *readFn) RestrictionSize(_ []byte, rest Restriction) float64 {
	if rest.Done {
		return 0
	}
	return 1
}

func (fn *readFn) CreateTracker(rest Restriction) *sdf.LockRTracker {
	return sdf.NewLockRTracker(&tracker{rest: rest})
}

func (fn *readFn) TruncateRestriction(_ *sdf.LockRTracker, _ []byte) Restriction {
	return Restriction{Done: true}
}

func (fn *readFn) InitialWatermarkEstimatorState(_ beam.EventTime, _ Restriction, _ []byte) int64 {
	return math.MinInt64
}

func (fn *readFn) CreateWatermarkEstimator(ms int64) *watermarkEstimator {
	return &watermarkEstimator{ms: ms}
}

func (fn *readFn) WatermarkEstimatorState(we *watermarkEstimator) int64 { return we.ms }

func (fn *readFn) ProcessElement(ctx context.Context, we *watermarkEstimator, rt *sdf.LockRTracker, _ []byte, emit func(beam.EventTime, Message)) (sdf.ProcessContinuation, error) {
	rest := rt.GetRestriction().(Restriction)
	if rest.Done {
		return sdf.StopProcessing(), nil
	}
	if draining(fn.Subscription) {
		rt.TryClaim(int64(drainPosition))
		log.Infof(ctx, "pubsubsource: reader of %s drained", fn.Subscription)
		return sdf.StopProcessing(), nil
	}
	if fn.flow.count() >= fn.MaxOutstanding {
		// Backpressure: the pipeline has enough in hand. The watermark
		// stays where it is: what waits in Pub/Sub is not yet read.
		fn.throttled.Inc(ctx, 1)
		return sdf.ResumeProcessingIn(throttleWait), nil
	}
	// A bundle gathers several pulls under a backlog: every bundle costs the
	// runner a fixed amount of work, so fewer, larger bundles drain faster.
	claimed := false
	deadline := time.Now().Add(maxBundleTime)
	for n := 0; n < maxPullsPerBundle; n++ {
		pullStart := time.Now()
		resp, err := fn.client.SubscriptionAdminClient.Pull(ctx, &pubsubpb.PullRequest{
			Subscription:      fn.Subscription,
			MaxMessages:       fn.MaxMessages,
			ReturnImmediately: true, // the reader polls; a blocking pull would hold the bundle open
		})
		if err != nil {
			// A failed pull loses nothing: retry after the poll interval.
			fn.pullErrs.Inc(ctx, 1)
			log.Warnf(ctx, "pubsubsource: pull %s: %v", fn.Subscription, err)
			return sdf.ResumeProcessingIn(fn.poll()), nil
		}
		msgs := resp.GetReceivedMessages()
		if len(msgs) == 0 {
			we.advance(pullStart.UnixMilli())
			if claimed {
				return sdf.ResumeProcessingIn(0), nil
			}
			return sdf.ResumeProcessingIn(fn.poll()), nil
		}
		if !claimed {
			if !rt.TryClaim(rest.Next) {
				// Not ours to emit: leave the messages unacked for redelivery.
				return sdf.StopProcessing(), rt.GetError()
			}
			claimed = true
		}
		fn.emitBatch(ctx, msgs, pullStart, emit)
		if len(msgs) < int(fn.MaxMessages) {
			// Caught up: anything not yet read was published after this pull began.
			we.advance(pullStart.UnixMilli())
			break
		}
		// Backlog: hold at the oldest message of this batch.
		we.advance(oldestPublish(msgs))
		if fn.flow.count() >= fn.MaxOutstanding || time.Now().After(deadline) {
			break
		}
	}
	return sdf.ResumeProcessingIn(0), nil
}

// Bounds on one bundle of the reader.
const (
	maxPullsPerBundle = 10
	maxBundleTime     = 200 * time.Millisecond
	// throttleWait is how long a held-back reader waits before looking again.
	throttleWait = 100 * time.Millisecond
)

func (fn *readFn) emitBatch(ctx context.Context, msgs []*pubsubpb.ReceivedMessage, pullStart time.Time, emit func(beam.EventTime, Message)) {
	ackIDs := make([]string, len(msgs))
	published := make([]int64, len(msgs))
	for i, rm := range msgs {
		ackIDs[i] = rm.GetAckId()
		published[i] = rm.GetMessage().GetPublishTime().AsTime().UnixMilli()
	}
	fn.flow.add(ackIDs, pullStart.Add(fn.ackDeadline()))
	for i, rm := range msgs {
		m := rm.GetMessage()
		emit(beam.EventTime(published[i]), Message{
			ID:            m.GetMessageId(),
			Data:          m.GetData(),
			Attributes:    m.GetAttributes(),
			PublishMillis: published[i],
			AckID:         ackIDs[i],
		})
	}
	fn.received.Inc(ctx, int64(len(msgs)))
}

func oldestPublish(msgs []*pubsubpb.ReceivedMessage) int64 {
	oldest := int64(math.MaxInt64)
	for _, rm := range msgs {
		oldest = min(oldest, rm.GetMessage().GetPublishTime().AsTime().UnixMilli())
	}
	return oldest
}

func (fn *readFn) ackDeadline() time.Duration {
	return time.Duration(fn.AckDeadlineMillis) * time.Millisecond
}

func (fn *readFn) poll() time.Duration { return time.Duration(fn.PollMillis) * time.Millisecond }

// watermarkEstimator only moves forward.
type watermarkEstimator struct{ ms int64 }

func (e *watermarkEstimator) CurrentWatermark() time.Time {
	if e.ms == math.MinInt64 {
		return mtime.MinTimestamp.ToTime()
	}
	return time.UnixMilli(e.ms)
}

func (e *watermarkEstimator) advance(ms int64) { e.ms = max(e.ms, ms) }
