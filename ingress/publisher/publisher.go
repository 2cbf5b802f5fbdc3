// Package publisher routes device messages to Pub/Sub topics as Cloud IoT Core did (Router) and
// reports success only once Pub/Sub has stored them, so front ends can acknowledge devices then.
package publisher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
)

// ErrClosed is returned by Publish after Close.
var ErrClosed = errors.New("publisher closed")

// delayThreshold bounds how long a message waits for others to share its
// Publish RPC. The client's default (10 ms, or 100 messages) would add up to
// 10 ms to every message from a quiet bridge, where a device is blocked until
// its PUBACK; 1 ms keeps that cost small while still batching under load,
// which a CountThreshold of 1 would give up (one RPC per message).
const delayThreshold = time.Millisecond

// Publisher publishes to Pub/Sub topics of one project. It is safe for
// concurrent use.
type Publisher struct {
	client *pubsub.Client

	mu     sync.Mutex
	topics map[string]*pubsub.Publisher // by the topicID given to Publish
	closed bool
}

// New returns a Publisher for project. Like every Pub/Sub client it talks to
// the emulator at PUBSUB_EMULATOR_HOST when that is set.
func New(ctx context.Context, project string) (*Publisher, error) {
	if project == "" {
		return nil, errors.New("publisher: empty project id")
	}
	c, err := pubsub.NewClient(ctx, project)
	if err != nil {
		return nil, fmt.Errorf("publisher: Pub/Sub client for project %q: %w", project, err)
	}
	return &Publisher{client: c, topics: make(map[string]*pubsub.Publisher)}, nil
}

// Publish publishes one message to topicID (a topic id in the publisher's
// project, or a full projects/{p}/topics/{t} name) and returns the server's
// message id. It returns only after Pub/Sub confirmed the message, or failed,
// or ctx is done; in the last case the message may still be published.
func (p *Publisher) Publish(ctx context.Context, topicID string, data []byte, attrs map[string]string) (string, error) {
	t, err := p.topic(topicID)
	if err != nil {
		return "", err
	}
	id, err := t.Publish(ctx, &pubsub.Message{Data: data, Attributes: attrs}).Get(ctx)
	if err != nil {
		return "", fmt.Errorf("publisher: publish %d bytes to %s: %w", len(data), t, err)
	}
	return id, nil
}

func (p *Publisher) topic(topicID string) (*pubsub.Publisher, error) {
	if topicID == "" {
		return nil, errors.New("publisher: empty topic id")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("publisher: publish to %q: %w", topicID, ErrClosed)
	}
	t, ok := p.topics[topicID]
	if !ok {
		t = p.client.Publisher(topicID)
		t.PublishSettings.DelayThreshold = delayThreshold
		p.topics[topicID] = t
	}
	return t, nil
}

// Close waits for the messages already handed to Pub/Sub to be sent (or to
// fail), then releases the client. Publish calls after Close fail with ErrClosed.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	topics := p.topics
	p.topics = nil
	p.mu.Unlock()

	var wg sync.WaitGroup
	for _, t := range topics {
		wg.Go(t.Stop) // Stop flushes outstanding messages first
	}
	wg.Wait()
	if err := p.client.Close(); err != nil {
		return fmt.Errorf("publisher: close Pub/Sub client: %w", err)
	}
	return nil
}
