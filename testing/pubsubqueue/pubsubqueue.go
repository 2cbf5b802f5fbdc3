// Package pubsubqueue is an in-process Pub/Sub server for backlogs of
// millions of messages: each publish, pull, ack and deadline change costs
// O(log n), so load tests measure the pipeline rather than the server.
//
// pstest, the fake the correctness tests use, rescans every message of a
// subscription on each pull and every 10 ms, and forgets messages left
// undelivered for 10 minutes; a 1M backlog makes it the bottleneck (measured:
// a 300k backlog drained at ~900 messages/s). This server implements only
// what iotpipe's source and benchmarks call — CreateTopic, CreateSubscription,
// GetSubscription, Publish, Pull, Acknowledge, ModifyAckDeadline — with
// Pub/Sub's semantics for them: at-least-once delivery, redelivery once an
// ack deadline lapses, acks with a stale ack id ignored.
package pubsubqueue

import (
	"container/heap"
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Server is a running server; point clients at Addr with PUBSUB_EMULATOR_HOST.
type Server struct {
	Addr string

	grpc *grpc.Server
	mu   sync.Mutex
	// topics maps a topic name to the subscriptions attached to it.
	topics map[string][]*subscription
	subs   map[string]*subscription
	nextID atomic.Int64
	acks   atomic.Int64

	pb.UnimplementedPublisherServer
	pb.UnimplementedSubscriberServer
}

// Start listens on addr (host:port; port 0 picks a free one) and serves.
func Start(addr string) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pubsubqueue: listen %s: %w", addr, err)
	}
	s := &Server{
		Addr:   l.Addr().String(),
		grpc:   grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20)),
		topics: map[string][]*subscription{},
		subs:   map[string]*subscription{},
	}
	pb.RegisterPublisherServer(s.grpc, s)
	pb.RegisterSubscriberServer(s.grpc, s)
	go s.grpc.Serve(l)
	return s, nil
}

// Close stops the server.
func (s *Server) Close() { s.grpc.Stop() }

// Acks counts the messages acknowledged so far (each once).
func (s *Server) Acks() int64 { return s.acks.Load() }

// PublishDirect publishes without a client round trip, for loading a backlog fast.
func (s *Server) PublishDirect(topic string, data []byte, attrs map[string]string) error {
	s.mu.Lock()
	subs, ok := s.topics[topic]
	s.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "topic %s", topic)
	}
	s.publish(subs, &pb.PubsubMessage{Data: data, Attributes: attrs})
	return nil
}

func (s *Server) publish(subs []*subscription, m *pb.PubsubMessage) string {
	id := strconv.FormatInt(s.nextID.Add(1), 10)
	m.MessageId = id
	m.PublishTime = timestamppb.Now()
	for _, sub := range subs {
		sub.enqueue(m)
	}
	return id
}

func (s *Server) CreateTopic(_ context.Context, t *pb.Topic) (*pb.Topic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.topics[t.Name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "topic %s", t.Name)
	}
	s.topics[t.Name] = nil
	return t, nil
}

func (s *Server) GetTopic(_ context.Context, r *pb.GetTopicRequest) (*pb.Topic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.topics[r.Topic]; !ok {
		return nil, status.Errorf(codes.NotFound, "topic %s", r.Topic)
	}
	return &pb.Topic{Name: r.Topic}, nil
}

func (s *Server) Publish(_ context.Context, r *pb.PublishRequest) (*pb.PublishResponse, error) {
	s.mu.Lock()
	subs, ok := s.topics[r.Topic]
	s.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "topic %s", r.Topic)
	}
	ids := make([]string, len(r.Messages))
	for i, m := range r.Messages {
		ids[i] = s.publish(subs, m)
	}
	return &pb.PublishResponse{MessageIds: ids}, nil
}

func (s *Server) CreateSubscription(_ context.Context, p *pb.Subscription) (*pb.Subscription, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.subs[p.Name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "subscription %s", p.Name)
	}
	subs, ok := s.topics[p.Topic]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "topic %s", p.Topic)
	}
	if p.AckDeadlineSeconds == 0 {
		p.AckDeadlineSeconds = 10
	}
	sub := &subscription{proto: p, server: s, outstanding: map[string]*entry{}, arrived: make(chan struct{})}
	s.subs[p.Name] = sub
	s.topics[p.Topic] = append(subs, sub)
	return p, nil
}

func (s *Server) GetSubscription(_ context.Context, r *pb.GetSubscriptionRequest) (*pb.Subscription, error) {
	sub, err := s.subscription(r.Subscription)
	if err != nil {
		return nil, err
	}
	return sub.proto, nil
}

func (s *Server) subscription(name string) (*subscription, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, ok := s.subs[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "subscription %s", name)
	}
	return sub, nil
}

// pullWait is how long a Pull without ReturnImmediately waits for a message.
const pullWait = 500 * time.Millisecond

func (s *Server) Pull(ctx context.Context, r *pb.PullRequest) (*pb.PullResponse, error) {
	sub, err := s.subscription(r.Subscription)
	if err != nil {
		return nil, err
	}
	max := int(r.MaxMessages)
	if max <= 0 {
		return nil, status.Error(codes.InvalidArgument, "max_messages must be positive")
	}
	msgs, arrived := sub.pull(max, time.Now())
	if len(msgs) == 0 && !r.ReturnImmediately { //nolint:staticcheck // deprecated in the API, still honoured
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-arrived:
		case <-time.After(pullWait):
		}
		msgs, _ = sub.pull(max, time.Now())
	}
	return &pb.PullResponse{ReceivedMessages: msgs}, nil
}

func (s *Server) Acknowledge(_ context.Context, r *pb.AcknowledgeRequest) (*emptypb.Empty, error) {
	sub, err := s.subscription(r.Subscription)
	if err != nil {
		return nil, err
	}
	s.acks.Add(int64(sub.ack(r.AckIds)))
	return &emptypb.Empty{}, nil
}

func (s *Server) ModifyAckDeadline(_ context.Context, r *pb.ModifyAckDeadlineRequest) (*emptypb.Empty, error) {
	sub, err := s.subscription(r.Subscription)
	if err != nil {
		return nil, err
	}
	if r.AckDeadlineSeconds < 0 || r.AckDeadlineSeconds > 600 {
		return nil, status.Errorf(codes.InvalidArgument, "ack_deadline_seconds %d outside [0, 600]", r.AckDeadlineSeconds)
	}
	sub.modify(r.AckIds, time.Duration(r.AckDeadlineSeconds)*time.Second, time.Now())
	return &emptypb.Empty{}, nil
}

// entry is one message's place in one subscription.
type entry struct {
	msg        *pb.PubsubMessage
	deliveries int
	ackID      string    // current delivery's ack id; "" while queued
	deadline   time.Time // of the current delivery
	heapIndex  int
}

// subscription keeps messages ready to deliver in FIFO order, and those
// delivered and not yet acked in a map by ack id and a heap by deadline.
type subscription struct {
	proto  *pb.Subscription
	server *Server

	mu          sync.Mutex
	ready       []*entry // FIFO: ready[head:] are waiting
	head        int
	outstanding map[string]*entry
	deadlines   deadlineHeap
	arrived     chan struct{} // closed (and replaced) when a message is enqueued
}

func (s *subscription) enqueue(m *pb.PubsubMessage) {
	s.mu.Lock()
	s.ready = append(s.ready, &entry{msg: m, heapIndex: -1})
	close(s.arrived)
	s.arrived = make(chan struct{})
	s.mu.Unlock()
}

func (s *subscription) pull(max int, now time.Time) ([]*pb.ReceivedMessage, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Deliveries whose deadline lapsed go back to the front of the queue.
	var lapsed []*entry
	for len(s.deadlines) > 0 && s.deadlines[0].deadline.Before(now) {
		e := heap.Pop(&s.deadlines).(*entry)
		delete(s.outstanding, e.ackID)
		e.ackID = ""
		lapsed = append(lapsed, e)
	}
	if len(lapsed) > 0 {
		s.ready = append(lapsed, s.ready[s.head:]...)
		s.head = 0
	}
	n := min(max, len(s.ready)-s.head)
	out := make([]*pb.ReceivedMessage, n)
	deadline := now.Add(time.Duration(s.proto.AckDeadlineSeconds) * time.Second)
	for i := range n {
		e := s.ready[s.head]
		s.ready[s.head] = nil
		s.head++
		e.deliveries++
		e.ackID = e.msg.MessageId + ":" + strconv.Itoa(e.deliveries)
		e.deadline = deadline
		s.outstanding[e.ackID] = e
		heap.Push(&s.deadlines, e)
		out[i] = &pb.ReceivedMessage{AckId: e.ackID, Message: e.msg, DeliveryAttempt: int32(e.deliveries)}
	}
	if s.head > 4096 && s.head > len(s.ready)/2 {
		s.ready = append([]*entry(nil), s.ready[s.head:]...)
		s.head = 0
	}
	return out, s.arrived
}

// ack removes the deliveries named by ackIDs; stale or unknown ids are
// ignored, as Pub/Sub does. It returns how many messages it acknowledged.
func (s *subscription) ack(ackIDs []string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, id := range ackIDs {
		if e, ok := s.outstanding[id]; ok {
			delete(s.outstanding, id)
			heap.Remove(&s.deadlines, e.heapIndex)
			n++
		}
	}
	return n
}

func (s *subscription) modify(ackIDs []string, d time.Duration, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ackIDs {
		e, ok := s.outstanding[id]
		if !ok {
			continue
		}
		if d == 0 { // a nack: deliver again as soon as possible
			delete(s.outstanding, id)
			heap.Remove(&s.deadlines, e.heapIndex)
			e.ackID = ""
			s.ready = append(s.ready, e)
			continue
		}
		e.deadline = now.Add(d)
		heap.Fix(&s.deadlines, e.heapIndex)
	}
}

type deadlineHeap []*entry

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex, h[j].heapIndex = i, j
}
func (h *deadlineHeap) Push(x any) {
	e := x.(*entry)
	e.heapIndex = len(*h)
	*h = append(*h, e)
}
func (h *deadlineHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heapIndex = -1
	return e
}
