package registry

import (
	"context"
	"fmt"
	"time"

	"cloud.google.com/go/bigtable"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/schemas"
)

// Presence says which bridge instance holds a device's MQTT connection and
// what the device subscribed to there, so that a config update or a command
// sent through any instance can be routed to the one that can deliver it.
type Presence struct {
	// Instance names the bridge instance holding the connection.
	Instance string `json:"instance"`
	// Generation identifies the connection. Generations of later
	// connections sort after those of earlier ones (see SetPresence).
	Generation string `json:"generation"`
	// ConnectedAt is when the connection was accepted.
	ConnectedAt time.Time `json:"connectedAt"`
	// Config and Commands say whether the device is subscribed to its
	// config topic and to (some of) its commands topics.
	Config   bool `json:"config,omitempty"`
	Commands bool `json:"commands,omitempty"`
}

// Columns of schemas.FamilyPresence.
const (
	colGeneration = "generation" // the Generation alone, for conditions on it
	colPresence   = "presence"   // the Presence, JSON
)

// presenceKey is the row of a device's presence; see the package comment.
func presenceKey(dp iotcore.DevicePath) string { return "#presence/" + deviceKey(dp) }

// maxGeneration bounds Presence.Generation, which is compared inside Bigtable.
const maxGeneration = 256

func validPresence(p Presence) error {
	if p.Instance == "" || p.Generation == "" {
		return fmt.Errorf("%w: presence: empty instance (%q) or generation (%q)", ErrInvalidArgument, p.Instance, p.Generation)
	}
	if len(p.Generation) > maxGeneration {
		return fmt.Errorf("%w: presence: generation of %d bytes, at most %d", ErrInvalidArgument, len(p.Generation), maxGeneration)
	}
	return nil
}

// SetPresence records p as the device's presence, unless the device's row
// already holds a later generation: then a newer connection of the device
// has recorded itself (on this instance or another), and p is stale.
// written says which happened. Generations are compared as byte strings,
// so callers make them lead with a fixed-width connection time.
//
// The device need not exist: presence has a row of its own.
func (s *Store) SetPresence(ctx context.Context, dp iotcore.DevicePath, p Presence) (written bool, err error) {
	if err := validDevicePath(dp); err != nil {
		return false, fmt.Errorf("registry: set presence: %w", err)
	}
	if err := validPresence(p); err != nil {
		return false, fmt.Errorf("registry: set presence of %s: %w", dp, err)
	}
	w := s.writer()
	w.replace(schemas.FamilyPresence, colGeneration, []byte(p.Generation))
	w.replaceJSON(schemas.FamilyPresence, colPresence, p)
	// "\x00" makes the range start just after p.Generation: only strictly
	// later generations match.
	newer := bigtable.ChainFilters(column(schemas.FamilyPresence, colGeneration), latest,
		bigtable.ValueRangeFilter([]byte(p.Generation+"\x00"), nil))
	var stale bool
	err = s.table.Apply(ctx, presenceKey(dp), bigtable.NewCondMutation(newer, nil, w.m), bigtable.GetCondMutationResult(&stale))
	if err != nil {
		return false, fmt.Errorf("registry: set presence of %s (generation %s) in %s: %w", dp, p.Generation, s.name, err)
	}
	return !stale, nil
}

// ClearPresence deletes the device's presence if it still holds generation,
// so that a connection that ends cannot erase the presence of a newer one.
// cleared says whether it did.
func (s *Store) ClearPresence(ctx context.Context, dp iotcore.DevicePath, generation string) (cleared bool, err error) {
	if err := validDevicePath(dp); err != nil {
		return false, fmt.Errorf("registry: clear presence: %w", err)
	}
	if generation == "" {
		return false, fmt.Errorf("registry: clear presence of %s: %w: empty generation", dp, ErrInvalidArgument)
	}
	del := bigtable.NewMutation()
	del.DeleteRow()
	same := bigtable.ChainFilters(column(schemas.FamilyPresence, colGeneration), latest,
		bigtable.ValueFilter(exactly(generation)))
	err = s.table.Apply(ctx, presenceKey(dp), bigtable.NewCondMutation(same, del, nil), bigtable.GetCondMutationResult(&cleared))
	if err != nil {
		return false, fmt.Errorf("registry: clear presence of %s (generation %s) in %s: %w", dp, generation, s.name, err)
	}
	return cleared, nil
}

// GetPresence reads the device's presence; ErrNotFound means no instance
// has recorded a connection of the device that subscribed to anything.
func (s *Store) GetPresence(ctx context.Context, dp iotcore.DevicePath) (Presence, error) {
	if err := validDevicePath(dp); err != nil {
		return Presence{}, fmt.Errorf("registry: get presence: %w", err)
	}
	row, err := s.table.ReadRow(ctx, presenceKey(dp),
		bigtable.RowFilter(bigtable.ChainFilters(column(schemas.FamilyPresence, colPresence), latest)))
	if err != nil {
		return Presence{}, fmt.Errorf("registry: read presence of %s from %s: %w", dp, s.name, err)
	}
	items := row[schemas.FamilyPresence]
	if len(items) == 0 {
		return Presence{}, fmt.Errorf("registry: presence of %s: %w", dp, ErrNotFound)
	}
	var p Presence
	if err := decodeJSON("presence", items[0].Value, &p); err != nil {
		return Presence{}, fmt.Errorf("registry: presence of %s: %w", dp, err)
	}
	return p, nil
}
