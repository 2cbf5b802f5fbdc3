package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/bigtable"
	"google.golang.org/api/option"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/schemas"
)

// Config says where the registry is stored and how lookups are cached.
type Config struct {
	// Project and Instance name the Bigtable instance holding Table.
	Project, Instance string
	// Table defaults to schemas.DevicesTable.
	Table string
	// CacheTTL is how long LookupDevice and LookupRegistry answers are
	// reused: DefaultCacheTTL when zero, no caching when negative.
	CacheTTL time.Duration
	// Now is the clock for timestamps and cache expiry; time.Now when nil.
	Now func() time.Time
}

// Store reads and writes registries and devices. It is safe for concurrent use.
type Store struct {
	client *bigtable.Client
	table  *bigtable.Table
	name   string // the table's name, for errors
	now    func() time.Time
	cache  *cache
}

// New connects to the registry table. bigtable.NewClient honours
// BIGTABLE_EMULATOR_HOST; opts go to it too.
func New(ctx context.Context, cfg Config, opts ...option.ClientOption) (*Store, error) {
	if cfg.Project == "" || cfg.Instance == "" {
		return nil, fmt.Errorf("registry: config: empty Bigtable project (%q) or instance (%q)", cfg.Project, cfg.Instance)
	}
	if cfg.Table == "" {
		cfg.Table = schemas.DevicesTable
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client, err := bigtable.NewClient(ctx, cfg.Project, cfg.Instance, opts...)
	if err != nil {
		return nil, fmt.Errorf("registry: bigtable client for projects/%s/instances/%s: %w", cfg.Project, cfg.Instance, err)
	}
	return &Store{
		client: client,
		table:  client.Open(cfg.Table),
		name:   fmt.Sprintf("projects/%s/instances/%s/tables/%s", cfg.Project, cfg.Instance, cfg.Table),
		now:    cfg.Now,
		cache:  newCache(cfg.CacheTTL, cfg.Now),
	}, nil
}

// Close closes the Bigtable client.
func (s *Store) Close() error { return s.client.Close() }

// Row keys; see the package comment.
func registryKey(p Path) string              { return p.Project + "/" + p.Location + "/" + p.Registry }
func deviceKey(dp iotcore.DevicePath) string { return registryKey(PathOf(dp)) + "/" + dp.Device }
func numIDKey(n uint64) string               { return fmt.Sprintf("#numid/%020d", n) }
func historyColumn(version int64) string     { return fmt.Sprintf("%020d", version) }
func exactly(s string) string                { return "^" + regexp.QuoteMeta(s) + "$" }
func family(name string) bigtable.Filter     { return bigtable.FamilyFilter(exactly(name)) }
func column(fam, col string) bigtable.Filter {
	return bigtable.ChainFilters(family(fam), bigtable.ColumnFilter(exactly(col)))
}
func families(names ...string) bigtable.Filter {
	return bigtable.FamilyFilter("^(" + strings.Join(names, "|") + ")$")
}

// Columns of schemas.FamilyDeviceFields and schemas.FamilyDeviceConfig.
const (
	colID          = "id"
	colNumID       = "num_id"
	colCredentials = "credentials"
	colBlocked     = "blocked"
	colMetadata    = "metadata"
	colDeviceClass = "device_class"
	colSchemaID    = "schema_id"
	colStatus      = "status"
	colLogLevel    = "log_level"
	colVersion     = "version" // FamilyDeviceConfig: current version, decimal
	colCurrent     = "current" // FamilyDeviceConfig: current DeviceConfig, JSON
	colRegistry    = "registry"
	colDevice      = "device"
)

// latest keeps the newest cell of each column: a column's older cells are
// deleted by the mutation that replaces it, but be safe against any left.
var latest = bigtable.LatestNFilter(1)

// writer builds one row's mutation with one timestamp for all its cells.
type writer struct {
	m  *bigtable.Mutation
	ts bigtable.Timestamp
}

func (s *Store) writer() writer {
	return writer{m: bigtable.NewMutation(), ts: bigtable.Time(s.now()).TruncateToMilliseconds()}
}

// replace makes value the column's only cell.
func (w writer) replace(fam, col string, value []byte) {
	w.m.DeleteCellsInColumn(fam, col)
	w.m.Set(fam, col, w.ts, value)
}

func (w writer) replaceJSON(fam, col string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("registry: marshal %T: %v", v, err)) // the registry's own types always marshal
	}
	w.replace(fam, col, b)
}

// CreateRegistry creates registry reg.ID in project and location.
func (s *Store) CreateRegistry(ctx context.Context, project, location string, reg Registry) (Registry, error) {
	p := Path{Project: project, Location: location, Registry: reg.ID}
	if err := p.validate(); err != nil {
		return Registry{}, fmt.Errorf("registry: create registry: %w", err)
	}
	if err := reg.validate(); err != nil {
		return Registry{}, fmt.Errorf("registry: create registry %s: %w", p, err)
	}
	w := s.writer()
	w.replaceJSON(schemas.FamilyRegistry, colRegistry, reg)
	var exists bool
	err := s.table.Apply(ctx, registryKey(p), bigtable.NewCondMutation(nil, nil, w.m), bigtable.GetCondMutationResult(&exists))
	s.cache.invalidateRegistry(p)
	if err != nil {
		return Registry{}, fmt.Errorf("registry: create registry %s in %s: %w", p, s.name, err)
	}
	if exists {
		return Registry{}, fmt.Errorf("registry: create registry %s: %w", p, ErrAlreadyExists)
	}
	return reg, nil
}

// GetRegistry reads a registry from Bigtable.
func (s *Store) GetRegistry(ctx context.Context, p Path) (Registry, error) {
	if err := p.validate(); err != nil {
		return Registry{}, fmt.Errorf("registry: get registry: %w", err)
	}
	row, err := s.table.ReadRow(ctx, registryKey(p), bigtable.RowFilter(bigtable.ChainFilters(column(schemas.FamilyRegistry, colRegistry), latest)))
	if err != nil {
		return Registry{}, fmt.Errorf("registry: read registry %s from %s: %w", p, s.name, err)
	}
	items := row[schemas.FamilyRegistry]
	if len(items) == 0 {
		return Registry{}, fmt.Errorf("registry: registry %s: %w", p, ErrNotFound)
	}
	var reg Registry
	if err := decodeJSON("registry", items[0].Value, &reg); err != nil {
		return Registry{}, fmt.Errorf("registry: registry %s: %w", p, err)
	}
	return reg, nil
}

// LookupRegistry is GetRegistry through the cache, for the message path.
func (s *Store) LookupRegistry(ctx context.Context, p Path) (Registry, error) {
	if e, ok := s.cache.registry(p); ok {
		return cloneRegistry(e.v), e.err
	}
	gen := s.cache.generation()
	reg, err := s.GetRegistry(ctx, p)
	if err == nil || errors.Is(err, ErrNotFound) {
		s.cache.putRegistry(gen, p, reg, err)
	}
	return cloneRegistry(reg), err
}

func cloneRegistry(r Registry) Registry {
	r.EventNotificationConfigs = append([]EventNotificationConfig(nil), r.EventNotificationConfigs...)
	return r
}

// CreateDevice creates device d.ID in registry p and returns it as stored:
// with a new NumID, status ACTIVE unless set, and config version 1 holding
// d.Config.BinaryData. Every credential must parse (see PublicKey.Parse).
func (s *Store) CreateDevice(ctx context.Context, p Path, d Device) (Device, error) {
	if err := p.validate(); err != nil {
		return Device{}, fmt.Errorf("registry: create device: %w", err)
	}
	dp := p.Device(d.ID)
	if err := iotcore.ValidDeviceID(d.ID); err != nil {
		return Device{}, fmt.Errorf("registry: create device in %s: %w: %w", p, ErrInvalidArgument, err)
	}
	if d.Status == "" {
		d.Status = StatusActive
	}
	if err := validDevice(d); err != nil {
		return Device{}, fmt.Errorf("registry: create device %s: %w", dp, err)
	}
	if len(d.Config.BinaryData) > MaxConfigBytes {
		return Device{}, fmt.Errorf("registry: create device %s: %w: config of %d bytes, at most %d",
			dp, ErrInvalidArgument, len(d.Config.BinaryData), MaxConfigBytes)
	}
	if _, err := s.GetRegistry(ctx, p); err != nil {
		return Device{}, fmt.Errorf("registry: create device %s: %w", dp, err)
	}

	numID, err := s.claimNumID(ctx, dp)
	if err != nil {
		return Device{}, err
	}
	d = d.clone()
	d.NumID = numID
	d.Config = DeviceConfig{Version: 1, CloudUpdateTime: s.now().UTC(), BinaryData: d.Config.BinaryData}
	d.LastHeartbeatTime, d.LastEventTime, d.LastStateTime, d.LastConfigAckTime, d.LastErrorTime = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	d.LastErrorStatus = nil

	w := s.writer()
	w.replace(schemas.FamilyDeviceFields, colID, []byte(d.ID))
	w.replace(schemas.FamilyDeviceFields, colNumID, []byte(strconv.FormatUint(numID, 10)))
	for _, f := range patchableFields {
		f.write(w, d)
	}
	writeConfig(w, d.Config)

	var exists bool
	err = s.table.Apply(ctx, deviceKey(dp), bigtable.NewCondMutation(nil, nil, w.m), bigtable.GetCondMutationResult(&exists))
	s.cache.invalidateDevice(dp)
	if err == nil && !exists {
		return d, nil
	}
	// The numId stays unused; give it back.
	if rerr := s.releaseNumID(ctx, numID, dp); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return Device{}, fmt.Errorf("registry: create device %s in %s: %w", dp, s.name, err)
	}
	return Device{}, fmt.Errorf("registry: create device %s: %w", dp, ErrAlreadyExists)
}

func validDevice(d Device) error {
	if err := validCredentials(d.Credentials); err != nil {
		return err
	}
	if err := validMetadata(d.Metadata); err != nil {
		return err
	}
	if err := validStatus(d.Status); err != nil {
		return err
	}
	if err := validLogLevel(d.LogLevel); err != nil {
		return err
	}
	if err := validFree("deviceClass", d.DeviceClass); err != nil {
		return err
	}
	return validFree("schemaId", d.SchemaID)
}

// claimNumID picks a random numId and claims its row, so that no other
// device, created here or by another process, can get it.
func (s *Store) claimNumID(ctx context.Context, dp iotcore.DevicePath) (uint64, error) {
	const attempts = 5 // a collision in 2^63 ids is already rare
	for range attempts {
		n := rand.Uint64N(math.MaxInt64) + 1 // fits a signed 64-bit column (BigQuery INT64)
		w := s.writer()
		w.replace(schemas.FamilyNumID, colDevice, []byte(dp.String()))
		var taken bool
		err := s.table.Apply(ctx, numIDKey(n), bigtable.NewCondMutation(nil, nil, w.m), bigtable.GetCondMutationResult(&taken))
		if err != nil {
			return 0, fmt.Errorf("registry: create device %s: claim numId %d in %s: %w", dp, n, s.name, err)
		}
		if !taken {
			return n, nil
		}
	}
	return 0, fmt.Errorf("registry: create device %s: %w: every numId tried was taken", dp, ErrAborted)
}

// releaseNumID deletes n's row if dp owns it.
func (s *Store) releaseNumID(ctx context.Context, n uint64, dp iotcore.DevicePath) error {
	del := bigtable.NewMutation()
	del.DeleteRow()
	owner := bigtable.ChainFilters(column(schemas.FamilyNumID, colDevice), latest, bigtable.ValueFilter(exactly(dp.String())))
	if err := s.table.Apply(ctx, numIDKey(n), bigtable.NewCondMutation(owner, del, nil)); err != nil {
		return fmt.Errorf("release numId %d of %s: %w", n, dp, err)
	}
	return nil
}

// GetDevice reads a device from Bigtable.
func (s *Store) GetDevice(ctx context.Context, dp iotcore.DevicePath) (Device, error) {
	if err := validDevicePath(dp); err != nil {
		return Device{}, fmt.Errorf("registry: get device: %w", err)
	}
	row, err := s.table.ReadRow(ctx, deviceKey(dp), bigtable.RowFilter(deviceFilter))
	if err != nil {
		return Device{}, fmt.Errorf("registry: read device %s from %s: %w", dp, s.name, err)
	}
	d, found, err := decodeDevice(row)
	if err != nil {
		return Device{}, fmt.Errorf("registry: device %s: %w", dp, err)
	}
	if !found {
		return Device{}, fmt.Errorf("registry: device %s: %w", dp, ErrNotFound)
	}
	return d, nil
}

// LookupDevice is GetDevice through the cache, for the authentication
// path. Unknown devices are remembered too. Any write through this Store
// forgets what it changed.
func (s *Store) LookupDevice(ctx context.Context, dp iotcore.DevicePath) (Device, error) {
	if e, ok := s.cache.device(dp); ok {
		return e.v.clone(), e.err
	}
	gen := s.cache.generation()
	d, err := s.GetDevice(ctx, dp)
	if err == nil || errors.Is(err, ErrNotFound) {
		s.cache.putDevice(gen, dp, d, err)
	}
	return d.clone(), err
}

func validDevicePath(dp iotcore.DevicePath) error {
	if _, err := iotcore.ParseClientID(dp.String()); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return nil
}

// deviceFilter reads what a Device holds: its fields and current config.
var deviceFilter = bigtable.ChainFilters(families(schemas.FamilyDeviceFields, schemas.FamilyDeviceConfig), latest)

// decodeDevice reads a device row; found is false for a row without one.
func decodeDevice(row bigtable.Row) (d Device, found bool, err error) {
	cols := make(map[string][]byte)
	for _, fam := range []string{schemas.FamilyDeviceFields, schemas.FamilyDeviceConfig} {
		for _, item := range row[fam] {
			cols[item.Column] = item.Value // "family:column"
		}
	}
	col := func(fam, name string) ([]byte, bool) {
		v, ok := cols[fam+":"+name]
		return v, ok
	}
	num, ok := col(schemas.FamilyDeviceFields, colNumID)
	if !ok {
		return Device{}, false, nil
	}
	if d.NumID, err = strconv.ParseUint(string(num), 10, 64); err != nil {
		return Device{}, true, fmt.Errorf("stored numId %q: %w", num, err)
	}
	id, _ := col(schemas.FamilyDeviceFields, colID)
	d.ID = string(id)
	for _, f := range patchableFields {
		if v, ok := col(schemas.FamilyDeviceFields, f.column); ok {
			if err := f.read(&d, v); err != nil {
				return Device{}, true, err
			}
		}
	}
	if v, ok := col(schemas.FamilyDeviceConfig, colCurrent); ok {
		if err := decodeJSON("config", v, &d.Config); err != nil {
			return Device{}, true, err
		}
	}
	return d, true, nil
}

// DefaultPageSize and MaxPageSize bound ListDevices pages.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// ListDevices returns registry p's devices in id order, at most pageSize
// (DefaultPageSize when <= 0, at most MaxPageSize) from pageToken ("" for
// the first page), and the token of the next page ("" after the last).
func (s *Store) ListDevices(ctx context.Context, p Path, pageSize int, pageToken string) ([]Device, string, error) {
	if err := p.validate(); err != nil {
		return nil, "", fmt.Errorf("registry: list devices: %w", err)
	}
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	pageSize = min(pageSize, MaxPageSize)
	prefix := registryKey(p) + "/"
	start := prefix
	if pageToken != "" {
		after, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || iotcore.ValidDeviceRef(string(after)) != nil {
			return nil, "", fmt.Errorf("registry: list devices of %s: %w: bad page token %q", p, ErrInvalidArgument, clip(pageToken))
		}
		start = prefix + string(after) + "\x00" // the smallest key after it
	}
	// prefix ends in "/", so every key with the prefix is below prefix with "/" replaced by "0".
	end := prefix[:len(prefix)-1] + "0"

	var (
		devices []Device
		rows    int    // rows read, devices or not
		lastKey string // of the pageSize-th row
		decErr  error
	)
	err := s.table.ReadRows(ctx, bigtable.NewRange(start, end), func(row bigtable.Row) bool {
		if rows++; rows > pageSize {
			return false // the extra row only says there is a next page
		}
		lastKey = row.Key()
		d, found, err := decodeDevice(row)
		if err != nil {
			decErr = fmt.Errorf("registry: row %q: %w", row.Key(), err)
			return false
		}
		if found {
			devices = append(devices, d)
		}
		return true
	}, bigtable.RowFilter(deviceFilter), bigtable.LimitRows(int64(pageSize+1)))
	if err != nil {
		return nil, "", fmt.Errorf("registry: list devices of %s in %s: %w", p, s.name, err)
	}
	if decErr != nil {
		return nil, "", decErr
	}
	next := ""
	if rows > pageSize {
		next = base64.RawURLEncoding.EncodeToString([]byte(strings.TrimPrefix(lastKey, prefix)))
	}
	return devices, next, nil
}

// patchField is one field PatchDevice can change, stored in its own column
// of schemas.FamilyDeviceFields.
type patchField struct {
	names  []string // update mask paths: REST (camelCase) and proto (snake_case)
	column string
	valid  func(Device) error
	write  func(writer, Device)
	read   func(*Device, []byte) error
}

var patchableFields = []patchField{
	{
		names: []string{"credentials"}, column: colCredentials,
		valid: func(d Device) error { return validCredentials(d.Credentials) },
		write: func(w writer, d Device) { w.replaceJSON(schemas.FamilyDeviceFields, colCredentials, d.Credentials) },
		read:  func(d *Device, v []byte) error { return decodeJSON("credentials", v, &d.Credentials) },
	},
	{
		names: []string{"blocked"}, column: colBlocked,
		valid: func(Device) error { return nil },
		write: func(w writer, d Device) {
			w.replace(schemas.FamilyDeviceFields, colBlocked, []byte(strconv.FormatBool(d.Blocked)))
		},
		read: func(d *Device, v []byte) (err error) {
			if d.Blocked, err = strconv.ParseBool(string(v)); err != nil {
				return fmt.Errorf("stored blocked %q: %w", v, err)
			}
			return nil
		},
	},
	{
		names: []string{"metadata"}, column: colMetadata,
		valid: func(d Device) error { return validMetadata(d.Metadata) },
		write: func(w writer, d Device) { w.replaceJSON(schemas.FamilyDeviceFields, colMetadata, d.Metadata) },
		read:  func(d *Device, v []byte) error { return decodeJSON("metadata", v, &d.Metadata) },
	},
	{
		names: []string{"logLevel", "log_level"}, column: colLogLevel,
		valid: func(d Device) error { return validLogLevel(d.LogLevel) },
		write: func(w writer, d Device) { w.replace(schemas.FamilyDeviceFields, colLogLevel, []byte(d.LogLevel)) },
		read:  func(d *Device, v []byte) error { d.LogLevel = LogLevel(v); return nil },
	},
	{
		names: []string{"status"}, column: colStatus,
		valid: func(d Device) error { return validStatus(d.Status) },
		write: func(w writer, d Device) { w.replace(schemas.FamilyDeviceFields, colStatus, []byte(d.Status)) },
		read:  func(d *Device, v []byte) error { d.Status = Status(v); return nil },
	},
	{
		names: []string{"deviceClass", "device_class"}, column: colDeviceClass,
		valid: func(d Device) error { return validFree("deviceClass", d.DeviceClass) },
		write: func(w writer, d Device) { w.replace(schemas.FamilyDeviceFields, colDeviceClass, []byte(d.DeviceClass)) },
		read:  func(d *Device, v []byte) error { d.DeviceClass = string(v); return nil },
	},
	{
		names: []string{"schemaId", "schema_id"}, column: colSchemaID,
		valid: func(d Device) error { return validFree("schemaId", d.SchemaID) },
		write: func(w writer, d Device) { w.replace(schemas.FamilyDeviceFields, colSchemaID, []byte(d.SchemaID)) },
		read:  func(d *Device, v []byte) error { d.SchemaID = string(v); return nil },
	},
}

// PatchDevice sets the fields named by updateMask (credentials, blocked,
// metadata, logLevel, status, deviceClass, schemaId; snake_case accepted)
// to their values in d, in one atomic write, and returns the device.
// Fields outside the mask keep their values, even if another writer
// changes them at the same time.
func (s *Store) PatchDevice(ctx context.Context, dp iotcore.DevicePath, d Device, updateMask []string) (Device, error) {
	if err := validDevicePath(dp); err != nil {
		return Device{}, fmt.Errorf("registry: patch device: %w", err)
	}
	if len(updateMask) == 0 {
		return Device{}, fmt.Errorf("registry: patch device %s: %w: empty update mask", dp, ErrInvalidArgument)
	}
	w := s.writer()
	for _, path := range updateMask {
		f, ok := patchFieldNamed(strings.TrimSpace(path))
		if !ok {
			return Device{}, fmt.Errorf("registry: patch device %s: %w: update mask path %q: want one of credentials, blocked, metadata, logLevel, status, deviceClass, schemaId",
				dp, ErrInvalidArgument, clip(path))
		}
		if err := f.valid(d); err != nil {
			return Device{}, fmt.Errorf("registry: patch device %s: %w", dp, err)
		}
		f.write(w, d)
	}
	var found bool
	exists := bigtable.ChainFilters(column(schemas.FamilyDeviceFields, colNumID), latest)
	err := s.table.Apply(ctx, deviceKey(dp), bigtable.NewCondMutation(exists, w.m, nil), bigtable.GetCondMutationResult(&found))
	s.cache.invalidateDevice(dp)
	if err != nil {
		return Device{}, fmt.Errorf("registry: patch device %s in %s: %w", dp, s.name, err)
	}
	if !found {
		return Device{}, fmt.Errorf("registry: patch device %s: %w", dp, ErrNotFound)
	}
	return s.GetDevice(ctx, dp)
}

func patchFieldNamed(name string) (patchField, bool) {
	for _, f := range patchableFields {
		for _, n := range f.names {
			if n == name {
				return f, true
			}
		}
	}
	return patchField{}, false
}

// DeleteDevice deletes a device, its config history, and its numId.
func (s *Store) DeleteDevice(ctx context.Context, dp iotcore.DevicePath) error {
	if err := validDevicePath(dp); err != nil {
		return fmt.Errorf("registry: delete device: %w", err)
	}
	defer s.cache.invalidateDevice(dp)
	const attempts = 5
	for range attempts {
		d, err := s.GetDevice(ctx, dp)
		if err != nil {
			return err
		}
		// Delete only the device just read: if it was deleted and created
		// again meanwhile, its new numId must not be left orphaned.
		del := bigtable.NewMutation()
		del.DeleteRow()
		same := bigtable.ChainFilters(column(schemas.FamilyDeviceFields, colNumID), latest,
			bigtable.ValueFilter(exactly(strconv.FormatUint(d.NumID, 10))))
		var deleted bool
		if err := s.table.Apply(ctx, deviceKey(dp), bigtable.NewCondMutation(same, del, nil), bigtable.GetCondMutationResult(&deleted)); err != nil {
			return fmt.Errorf("registry: delete device %s in %s: %w", dp, s.name, err)
		}
		if deleted {
			if err := s.releaseNumID(ctx, d.NumID, dp); err != nil {
				return fmt.Errorf("registry: delete device %s: %w", dp, err)
			}
			return nil
		}
	}
	return fmt.Errorf("registry: delete device %s: %w: the device kept changing", dp, ErrAborted)
}
