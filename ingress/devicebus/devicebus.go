// Package devicebus carries cloud-to-device messages (config updates and commands) to the
// bridge instance that holds the device's connection, whichever instance they were sent through.
//
// Each instance records in the registry which of its connections subscribed
// to config or commands (registry.Presence, keyed by a connection
// generation so that a stale instance cannot erase a newer connection's
// record). Sending reads the presence: a device held here is delivered to
// in process; one held elsewhere gets a message on the fan-out Pub/Sub
// topic, with an attribute naming the target instance, which every
// instance reads through a subscription of its own, filtered on that
// attribute. With a single instance no topic is needed.
package devicebus

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// Errors of sending, for errors.Is. ErrNotConnected and ErrNotSubscribed
// are registry.ErrFailedPrecondition, as IoT Core answered sendCommandToDevice
// for such a device.
var (
	ErrNotConnected  error = preconditionError("device is not connected")
	ErrNotSubscribed error = preconditionError("device is not subscribed")
	// ErrUnreachable: the device is connected to another instance and this
	// one has no fan-out topic to reach it by.
	ErrUnreachable = errors.New("bridge instance holding the device is unreachable")
)

// preconditionError is an error that is also registry.ErrFailedPrecondition.
type preconditionError string

func (e preconditionError) Error() string { return string(e) }

// Is makes errors.Is(err, registry.ErrFailedPrecondition) true.
func (e preconditionError) Is(target error) bool { return target == registry.ErrFailedPrecondition }

// MaxCommandBytes is the largest command IoT Core sent a device.
const MaxCommandBytes = 256 << 10

// maxSubFolder is the longest command subfolder IoT Core accepted.
const maxSubFolder = 256

// Local is a front end of this instance that holds device connections (the
// MQTT bridge). Its methods return ErrNotConnected or ErrNotSubscribed
// (possibly wrapped) when it cannot deliver for those reasons.
type Local interface {
	// DeliverConfig sends cfg to the device if it is subscribed to its
	// config topic and has not been sent a newer version.
	DeliverConfig(ctx context.Context, dp iotcore.DevicePath, cfg registry.DeviceConfig) error
	// DeliverCommand sends a command to the device's commands topic
	// (with subFolder, if not empty) if the device is subscribed to it.
	DeliverCommand(ctx context.Context, dp iotcore.DevicePath, subFolder string, data []byte) error
}

// Config is the bus's configuration, filled from flags in main.
type Config struct {
	// Instance names this bridge instance among those sharing the registry:
	// 1 to 64 of [a-zA-Z0-9-_.]. Empty picks a random name, which is right
	// unless something else needs to know it.
	Instance string
	// FanoutTopic is the Pub/Sub topic every instance publishes messages
	// for other instances to: a topic id in Project or a full
	// projects/{p}/topics/{t} name. It must exist. Empty means a single
	// instance: messages for devices held elsewhere fail with ErrUnreachable.
	FanoutTopic string
	// Project is the Google Cloud project of the instance's subscription
	// (and of FanoutTopic when that is an id).
	Project string
	// CommandTTL is how old a command read from the fan-out topic may be
	// and still be delivered; DefaultCommandTTL when zero. A command is
	// meant for now: one that waited (an instance restarting under the same
	// name) is dropped rather than surprising the device later.
	CommandTTL time.Duration
}

// DefaultCommandTTL is Config.CommandTTL when zero.
const DefaultCommandTTL = time.Minute

// Message attributes on the fan-out topic, besides iotcore.EventAttributes'
// device attributes (and subFolder for a command).
const (
	AttrInstance      = "instance" // the target instance
	AttrKind          = "kind"     // KindConfig or KindCommand
	AttrConfigVersion = "configVersion"
	AttrCloudUpdate   = "cloudUpdateTime" // RFC 3339, of a config
	KindConfig        = "config"
	KindCommand       = "command"
)

// Bus routes cloud-to-device messages. It is safe for concurrent use.
type Bus struct {
	cfg   Config
	store *registry.Store
	pub   Publisher // nil without a fan-out topic
	log   *slog.Logger
	seq   atomic.Uint64
	local atomic.Pointer[Local] // set once, by Attach

	mu      sync.Mutex
	started bool
	closed  bool
	client  *pubsub.Client // the subscription's, after Start
	subName string
	stop    context.CancelFunc
	done    chan struct{} // closed when the receive loop ends
}

// Publisher publishes to the fan-out topic and returns once Pub/Sub has
// stored the message; *publisher.Publisher is one.
type Publisher interface {
	Publish(ctx context.Context, topicID string, data []byte, attrs map[string]string) (string, error)
}

// New checks cfg and returns a bus over store. pub publishes to the fan-out
// topic; it may be nil without one. The bus does not receive from other
// instances until Start. A nil logger means slog.Default().
func New(store *registry.Store, cfg Config, pub Publisher, logger *slog.Logger) (*Bus, error) {
	if store == nil {
		return nil, errors.New("devicebus: nil registry store")
	}
	if cfg.Instance == "" {
		cfg.Instance = "bridge-" + strings.ToLower(rand.Text()[:12])
	}
	if err := validInstance(cfg.Instance); err != nil {
		return nil, fmt.Errorf("devicebus: config: %w", err)
	}
	if cfg.CommandTTL < 0 {
		return nil, fmt.Errorf("devicebus: config: negative CommandTTL %v", cfg.CommandTTL)
	}
	if cfg.CommandTTL == 0 {
		cfg.CommandTTL = DefaultCommandTTL
	}
	if logger == nil {
		logger = slog.Default()
	}
	b := &Bus{cfg: cfg, store: store, log: logger.With("component", "devicebus", "instance", cfg.Instance)}
	if cfg.FanoutTopic != "" {
		if cfg.Project == "" {
			return nil, errors.New("devicebus: config: FanoutTopic without a Project")
		}
		if pub == nil {
			return nil, fmt.Errorf("devicebus: config: FanoutTopic %s without a publisher", cfg.FanoutTopic)
		}
		b.cfg.FanoutTopic = topicName(cfg.Project, cfg.FanoutTopic)
		b.pub = pub
	}
	return b, nil
}

// validInstance keeps instance names usable in a subscription id and a filter expression.
func validInstance(name string) error {
	if len(name) > 64 || strings.IndexFunc(name, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.')
	}) >= 0 {
		return fmt.Errorf("instance name %q: want 1 to 64 of [a-zA-Z0-9-_.]", name)
	}
	return nil
}

func topicName(project, topic string) string {
	if strings.HasPrefix(topic, "projects/") {
		return topic
	}
	return "projects/" + project + "/topics/" + topic
}

// Instance returns this instance's name.
func (b *Bus) Instance() string { return b.cfg.Instance }

// Attach makes l the front end that delivers to devices connected here.
// The MQTT bridge calls it when built with the bus; there is at most one.
func (b *Bus) Attach(l Local) error {
	if l == nil {
		return errors.New("devicebus: attach a nil front end")
	}
	if !b.local.CompareAndSwap(nil, &l) {
		return fmt.Errorf("devicebus: instance %s: a front end is already attached", b.cfg.Instance)
	}
	return nil
}

// attached returns the front end, or nil before Attach.
func (b *Bus) attached() Local {
	if l := b.local.Load(); l != nil {
		return *l
	}
	return nil
}

// Conn is one device connection held by this instance.
type Conn struct {
	Device      iotcore.DevicePath
	Generation  string
	ConnectedAt time.Time
}

// NewConn names a new connection of dp. Its generation leads with the
// connection time in zero-padded nanoseconds, so it sorts after those of
// earlier connections, on any instance whose clock agrees.
func (b *Bus) NewConn(dp iotcore.DevicePath) Conn {
	now := time.Now()
	gen := fmt.Sprintf("%020d.%s.%d", now.UnixNano(), b.cfg.Instance, b.seq.Add(1))
	return Conn{Device: dp, Generation: gen, ConnectedAt: now.UTC()}
}

// Subscribed records what c is subscribed to, so that config updates and
// commands are routed to it; with neither, it forgets c. current is false
// when a newer connection of the device has recorded itself: c is stale.
func (b *Bus) Subscribed(ctx context.Context, c Conn, config, commands bool) (current bool, err error) {
	if !config && !commands {
		_, err := b.Disconnected(ctx, c)
		return true, err
	}
	written, err := b.store.SetPresence(ctx, c.Device, registry.Presence{
		Instance: b.cfg.Instance, Generation: c.Generation, ConnectedAt: c.ConnectedAt,
		Config: config, Commands: commands,
	})
	if err != nil {
		return false, fmt.Errorf("devicebus: %w", err)
	}
	return written, nil
}

// Disconnected forgets c, unless a newer connection of the device has
// recorded itself; cleared says which.
func (b *Bus) Disconnected(ctx context.Context, c Conn) (cleared bool, err error) {
	if cleared, err = b.store.ClearPresence(ctx, c.Device, c.Generation); err != nil {
		return false, fmt.Errorf("devicebus: %w", err)
	}
	return cleared, nil
}

// CurrentConfig reads the device's current config from the registry (not
// its cache: a device that subscribes must get the newest version).
func (b *Bus) CurrentConfig(ctx context.Context, dp iotcore.DevicePath) (registry.DeviceConfig, error) {
	d, err := b.store.GetDevice(ctx, dp)
	if err != nil {
		return registry.DeviceConfig{}, fmt.Errorf("devicebus: %w", err)
	}
	return d.Config, nil
}

// SendCommand sends a command to the device wherever it is connected
// (IoT Core's sendCommandToDevice). It fails with ErrNotConnected or
// ErrNotSubscribed when the device has no connection subscribed to
// commands. A device held here gets the command before SendCommand
// returns; one held by another instance, once that instance has read it
// from the fan-out topic. It is not kept for devices that are not connected.
func (b *Bus) SendCommand(ctx context.Context, dp iotcore.DevicePath, subFolder string, data []byte) error {
	if err := validCommand(dp, subFolder, data); err != nil {
		return fmt.Errorf("devicebus: command to %s: %w", dp, err)
	}
	p, err := b.store.GetPresence(ctx, dp)
	if errors.Is(err, registry.ErrNotFound) { // presence is recorded on subscribe
		return fmt.Errorf("devicebus: command to %s: %w, or not subscribed to commands", dp, ErrNotConnected)
	}
	if err != nil {
		return fmt.Errorf("devicebus: command to %s: %w", dp, err)
	}
	if !p.Commands {
		return fmt.Errorf("devicebus: command to %s: %w to commands", dp, ErrNotSubscribed)
	}
	if p.Instance == b.cfg.Instance {
		if l := b.attached(); l != nil {
			if err := l.DeliverCommand(ctx, dp, subFolder, data); err != nil {
				return fmt.Errorf("devicebus: command to %s: %w", dp, err)
			}
			return nil
		}
	}
	attrs := iotcore.EventAttributes(dp, "", subFolder)
	attrs[AttrKind] = KindCommand
	if err := b.forward(ctx, p, data, attrs); err != nil {
		return fmt.Errorf("devicebus: command to %s: %w", dp, err)
	}
	return nil
}

func validCommand(dp iotcore.DevicePath, subFolder string, data []byte) error {
	if len(data) > MaxCommandBytes {
		return fmt.Errorf("%w: command of %d bytes, at most %d", registry.ErrInvalidArgument, len(data), MaxCommandBytes)
	}
	if len(subFolder) > maxSubFolder {
		return fmt.Errorf("%w: subfolder of %d characters, at most %d", registry.ErrInvalidArgument, len(subFolder), maxSubFolder)
	}
	topic := iotcore.Topic{Kind: iotcore.Commands, Device: dp.Device, SubFolder: subFolder}
	if t, err := iotcore.ParseTopic(topic.String()); err != nil || t.SubFolder != subFolder || subFolder == "#" {
		return fmt.Errorf("%w: subfolder %q: want levels separated by /, none empty, without + # or NUL",
			registry.ErrInvalidArgument, subFolder)
	}
	return nil
}

// ConfigUpdated sends a device's new config to the connection subscribed
// to it, if any (after registry.Store.ModifyConfig). A device not connected
// now gets the newest config when it subscribes, so that is not an error.
func (b *Bus) ConfigUpdated(ctx context.Context, dp iotcore.DevicePath, cfg registry.DeviceConfig) error {
	p, err := b.store.GetPresence(ctx, dp)
	if errors.Is(err, registry.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("devicebus: config version %d to %s: %w", cfg.Version, dp, err)
	}
	if !p.Config {
		return nil
	}
	if p.Instance == b.cfg.Instance {
		if l := b.attached(); l != nil {
			if err := l.DeliverConfig(ctx, dp, cfg); err != nil && !errors.Is(err, registry.ErrFailedPrecondition) {
				return fmt.Errorf("devicebus: config version %d to %s: %w", cfg.Version, dp, err)
			}
			return nil
		}
	}
	attrs := iotcore.EventAttributes(dp, "", "")
	attrs[AttrKind] = KindConfig
	attrs[AttrConfigVersion] = strconv.FormatInt(cfg.Version, 10)
	attrs[AttrCloudUpdate] = cfg.CloudUpdateTime.UTC().Format(time.RFC3339Nano)
	if err := b.forward(ctx, p, cfg.BinaryData, attrs); err != nil {
		return fmt.Errorf("devicebus: config version %d to %s: %w", cfg.Version, dp, err)
	}
	return nil
}

// forward publishes a message for the instance named by p.
func (b *Bus) forward(ctx context.Context, p registry.Presence, data []byte, attrs map[string]string) error {
	if b.pub == nil {
		return fmt.Errorf("%w: instance %s holds the device, and instance %s has no fan-out topic",
			ErrUnreachable, p.Instance, b.cfg.Instance)
	}
	attrs[AttrInstance] = p.Instance
	if _, err := b.pub.Publish(ctx, b.cfg.FanoutTopic, data, attrs); err != nil {
		return fmt.Errorf("%w: instance %s holds the device: %w", ErrUnreachable, p.Instance, err)
	}
	return nil
}

// Subscription settings. A subscription outlives its instance only if the
// instance stops without Close; Pub/Sub deletes it after a day unused.
const (
	subscriptionTTL       = 24 * time.Hour   // Pub/Sub's minimum
	subscriptionRetention = 10 * time.Minute // Pub/Sub's minimum
	deliverTimeout        = 10 * time.Second
)

// Start creates this instance's subscription to the fan-out topic and
// delivers what it reads to the attached front end until Close. Without a
// fan-out topic or a front end there is nothing to read for, and Start only
// marks the bus started. PUBSUB_EMULATOR_HOST selects an emulator.
func (b *Bus) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.closed {
		return errors.New("devicebus: Start called twice or after Close")
	}
	b.started = true
	if b.cfg.FanoutTopic == "" || b.attached() == nil {
		return nil
	}
	client, err := pubsub.NewClient(ctx, b.cfg.Project)
	if err != nil {
		return fmt.Errorf("devicebus: Pub/Sub client for project %s: %w", b.cfg.Project, err)
	}
	// The topic id keeps subscriptions of different buses in one project apart.
	topicID := b.cfg.FanoutTopic[strings.LastIndex(b.cfg.FanoutTopic, "/")+1:]
	name := fmt.Sprintf("projects/%s/subscriptions/%s.%s", b.cfg.Project, topicID, b.cfg.Instance)
	_, err = client.SubscriptionAdminClient.CreateSubscription(ctx, &pb.Subscription{
		Name:                     name,
		Topic:                    b.cfg.FanoutTopic,
		Filter:                   fmt.Sprintf("attributes.%s = %q", AttrInstance, b.cfg.Instance),
		AckDeadlineSeconds:       int32(deliverTimeout/time.Second) + 10,
		MessageRetentionDuration: durationpb.New(subscriptionRetention),
		ExpirationPolicy:         &pb.ExpirationPolicy{Ttl: durationpb.New(subscriptionTTL)},
	})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		client.Close()
		return fmt.Errorf("devicebus: create subscription %s to %s: %w", name, b.cfg.FanoutTopic, err)
	}
	recvCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	b.client, b.subName, b.stop, b.done = client, name, stop, make(chan struct{})
	sub := client.Subscriber(name)
	go func() {
		defer close(b.done)
		if err := sub.Receive(recvCtx, b.receive); err != nil && recvCtx.Err() == nil {
			b.log.Error("fan-out subscription stopped: config updates and commands sent through other instances no longer reach devices here",
				"subscription", name, "error", err)
		}
	}()
	b.log.Info("receiving cloud-to-device messages from other instances", "topic", b.cfg.FanoutTopic, "subscription", name)
	return nil
}

// receive delivers one message from the fan-out topic. It always acks:
// a message that cannot be delivered now would not be right later.
func (b *Bus) receive(ctx context.Context, m *pubsub.Message) {
	defer m.Ack()
	a := m.Attributes
	if a[AttrInstance] != b.cfg.Instance { // the filter should have kept it away
		return
	}
	dp := iotcore.DevicePath{Project: a[iotcore.AttrProjectID], Location: a[iotcore.AttrDeviceRegistryLocation],
		Registry: a[iotcore.AttrDeviceRegistryID], Device: a[iotcore.AttrDeviceID]}
	local := b.attached()
	ctx, cancel := context.WithTimeout(ctx, deliverTimeout)
	defer cancel()
	var err error
	switch a[AttrKind] {
	case KindCommand:
		if age := time.Since(m.PublishTime); age > b.cfg.CommandTTL {
			b.log.Warn("dropping command: too old", "device", dp.String(), "age", age, "ttl", b.cfg.CommandTTL)
			return
		}
		err = local.DeliverCommand(ctx, dp, a[iotcore.AttrSubFolder], m.Data)
	case KindConfig:
		var cfg registry.DeviceConfig
		cfg, err = decodeConfig(a, m.Data)
		if err == nil {
			err = local.DeliverConfig(ctx, dp, cfg)
		}
	default:
		err = fmt.Errorf("unknown %s attribute %q", AttrKind, a[AttrKind])
	}
	if err != nil {
		b.log.Warn("cloud-to-device message not delivered", "device", dp.String(), "kind", a[AttrKind],
			"message_id", m.ID, "error", err)
		return
	}
	b.log.Debug("cloud-to-device message delivered", "device", dp.String(), "kind", a[AttrKind], "message_id", m.ID)
}

func decodeConfig(a map[string]string, data []byte) (registry.DeviceConfig, error) {
	v, err := strconv.ParseInt(a[AttrConfigVersion], 10, 64)
	if err != nil {
		return registry.DeviceConfig{}, fmt.Errorf("%s attribute %q: %w", AttrConfigVersion, a[AttrConfigVersion], err)
	}
	t, err := time.Parse(time.RFC3339Nano, a[AttrCloudUpdate])
	if err != nil {
		return registry.DeviceConfig{}, fmt.Errorf("%s attribute %q: %w", AttrCloudUpdate, a[AttrCloudUpdate], err)
	}
	return registry.DeviceConfig{Version: v, CloudUpdateTime: t, BinaryData: data}, nil
}

// closeTimeout bounds deleting the subscription on Close.
const closeTimeout = 10 * time.Second

// Close stops receiving and deletes this instance's subscription. It does
// not close the publisher or the store, which the caller owns.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed || b.client == nil {
		b.closed = true
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	client, subName := b.client, b.subName
	b.mu.Unlock()

	b.stop()
	<-b.done
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	if err := client.SubscriptionAdminClient.DeleteSubscription(ctx, &pb.DeleteSubscriptionRequest{Subscription: subName}); err != nil &&
		status.Code(err) != codes.NotFound {
		errs = append(errs, fmt.Errorf("devicebus: delete subscription %s: %w", subName, err))
	}
	if err := client.Close(); err != nil {
		errs = append(errs, fmt.Errorf("devicebus: close Pub/Sub client: %w", err))
	}
	return errors.Join(errs...)
}
