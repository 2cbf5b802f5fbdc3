// Package pubsubsink publishes records to a Pub/Sub topic (dead letters,
// alerts) and hands back each record's receipt once Pub/Sub confirmed it.
package pubsubsink

import (
	"context"
	"fmt"
	"strings"

	"cloud.google.com/go/pubsub/v2"
	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
)

func init() {
	register.DoFn3x1[context.Context, Message, func(string), error](&publishFn{})
	register.Emitter1[string]()
}

// Message is one Pub/Sub message to publish. AckID is the receipt of the
// source message it stands for, handed back once this one is published.
type Message struct {
	Data       []byte
	Attributes map[string]string
	AckID      string
}

// Config names the topic.
type Config struct {
	// Topic is projects/{project}/topics/{id}.
	Topic string
}

// Validate reports a malformed topic name.
func (c Config) Validate() error {
	_, _, err := splitTopic(c.Topic)
	return err
}

func splitTopic(name string) (project, id string, err error) {
	parts := strings.Split(name, "/")
	if len(parts) != 4 || parts[0] != "projects" || parts[2] != "topics" || parts[1] == "" || parts[3] == "" {
		return "", "", fmt.Errorf("topic %q: want projects/{project}/topics/{id}", name)
	}
	return parts[1], parts[3], nil
}

// maxPending bounds the publishes a bundle keeps in flight before it waits
// for their confirmations, so a large bundle does not hold every payload.
const maxPending = 1000

// Publish publishes every element of msgs (a PCollection of Message) to
// cfg.Topic and returns the receipts (Message.AckID, a PCollection of
// string) of those Pub/Sub confirmed. A bundle with a failed publish fails
// and is retried whole: delivery to the topic is at least once, and
// consumers that need exactly once deduplicate on the attributes the
// records carry (the source message id).
func Publish(s beam.Scope, cfg Config, msgs beam.PCollection) beam.PCollection {
	s = s.Scope("pubsubsink.Publish")
	return beam.ParDo(s, &publishFn{Topic: cfg.Topic}, msgs)
}

type publishFn struct {
	Topic string

	client    *pubsub.Client
	publisher *pubsub.Publisher
	pending   []*pubsub.PublishResult
	acks      []string
	published beam.Counter
	failed    beam.Counter
}

func (fn *publishFn) Setup(ctx context.Context) error {
	project, _, err := splitTopic(fn.Topic)
	if err != nil {
		return err
	}
	// pubsub.NewClient honours PUBSUB_EMULATOR_HOST.
	if fn.client, err = pubsub.NewClient(ctx, project); err != nil {
		return fmt.Errorf("pubsub client for %s: %w", fn.Topic, err)
	}
	fn.publisher = fn.client.Publisher(fn.Topic)
	fn.published = beam.NewCounter("iotpipe.pubsub", "messages_published")
	fn.failed = beam.NewCounter("iotpipe.pubsub", "publish_failures")
	return nil
}

func (fn *publishFn) Teardown() error {
	if fn.client == nil {
		return nil
	}
	fn.publisher.Stop()
	return fn.client.Close()
}

func (fn *publishFn) StartBundle(context.Context, func(string)) {
	fn.pending, fn.acks = fn.pending[:0], fn.acks[:0]
}

func (fn *publishFn) ProcessElement(ctx context.Context, m Message, published func(string)) error {
	fn.pending = append(fn.pending, fn.publisher.Publish(ctx, &pubsub.Message{Data: m.Data, Attributes: m.Attributes}))
	fn.acks = append(fn.acks, m.AckID)
	if len(fn.pending) >= maxPending {
		return fn.wait(ctx, published)
	}
	return nil
}

func (fn *publishFn) FinishBundle(ctx context.Context, published func(string)) error {
	return fn.wait(ctx, published)
}

// wait collects the confirmations of the publishes in flight; receipts are
// handed back only when every one succeeded, since the bundle is retried
// whole otherwise.
func (fn *publishFn) wait(ctx context.Context, published func(string)) error {
	defer func() { fn.pending, fn.acks = fn.pending[:0], fn.acks[:0] }()
	var firstErr error
	for _, r := range fn.pending {
		if _, err := r.Get(ctx); err != nil {
			fn.failed.Inc(ctx, 1)
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if firstErr != nil {
		return fmt.Errorf("publish %d messages to %s: %w", len(fn.pending), fn.Topic, firstErr)
	}
	fn.published.Inc(ctx, int64(len(fn.pending)))
	for _, a := range fn.acks {
		if a != "" {
			published(a)
		}
	}
	return nil
}
