package registry_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/bigtable"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
	"github.com/iotpipe/iotpipe/schemas"
)

var reg = registry.Path{Project: "proj", Location: "us-central1", Registry: "reg"}

// start opens a Store on a fresh emulator with registry reg created.
func start(t *testing.T, cfg registry.Config) *registry.Store {
	t.Helper()
	s := registrytest.Start(t, cfg)
	if _, err := s.CreateRegistry(t.Context(), reg.Project, reg.Location, registry.Registry{ID: reg.Registry}); err != nil {
		t.Fatalf("CreateRegistry: %v", err)
	}
	return s
}

func mustCreate(t *testing.T, s *registry.Store, d registry.Device) registry.Device {
	t.Helper()
	got, err := s.CreateDevice(t.Context(), reg, d)
	if err != nil {
		t.Fatalf("CreateDevice(%s): %v", d.ID, err)
	}
	return got
}

// rawTable opens the devices table with a client of its own, to look under
// the Store or change the table behind its back.
func rawTable(t *testing.T) *bigtable.Table {
	t.Helper()
	c, err := bigtable.NewClient(t.Context(), registrytest.Project, registrytest.Instance)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.Open(schemas.DevicesTable)
}

func TestRegistries(t *testing.T) {
	s := registrytest.Start(t, registry.Config{})
	ctx := t.Context()
	want := registry.Registry{
		ID: "reg",
		EventNotificationConfigs: []registry.EventNotificationConfig{
			{SubfolderMatches: "alerts", PubsubTopicName: "projects/proj/topics/alerts"},
			{PubsubTopicName: "projects/proj/topics/events"},
		},
		StateNotificationConfig: registry.StateNotificationConfig{PubsubTopicName: "projects/proj/topics/state"},
	}
	if _, err := s.CreateRegistry(ctx, "proj", "us-central1", want); err != nil {
		t.Fatalf("CreateRegistry: %v", err)
	}
	got, err := s.GetRegistry(ctx, reg)
	if err != nil {
		t.Fatalf("GetRegistry: %v", err)
	}
	if !jsonEqual(t, got, want) {
		t.Errorf("GetRegistry = %+v, want %+v", got, want)
	}
	if _, err := s.CreateRegistry(ctx, "proj", "us-central1", want); !errors.Is(err, registry.ErrAlreadyExists) {
		t.Errorf("second CreateRegistry = %v, want ErrAlreadyExists", err)
	}
	if _, err := s.GetRegistry(ctx, registry.Path{Project: "proj", Location: "us-central1", Registry: "nope"}); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetRegistry(nope) = %v, want ErrNotFound", err)
	}

	topic := func(i int) string { return fmt.Sprintf("projects/proj/topics/t%d", i) }
	var eleven []registry.EventNotificationConfig
	for i := range 11 {
		eleven = append(eleven, registry.EventNotificationConfig{SubfolderMatches: fmt.Sprint("s", i), PubsubTopicName: topic(i)})
	}
	bad := []struct {
		name string
		reg  registry.Registry
	}{
		{"empty id", registry.Registry{}},
		{"slash in id", registry.Registry{ID: "a/b"}},
		{"11 event configs", registry.Registry{ID: "r1", EventNotificationConfigs: eleven}},
		{"catch-all not last", registry.Registry{ID: "r2", EventNotificationConfigs: []registry.EventNotificationConfig{
			{PubsubTopicName: topic(1)}, {SubfolderMatches: "a", PubsubTopicName: topic(2)}}}},
		{"repeated subfolder", registry.Registry{ID: "r3", EventNotificationConfigs: []registry.EventNotificationConfig{
			{SubfolderMatches: "a", PubsubTopicName: topic(1)}, {SubfolderMatches: "a", PubsubTopicName: topic(2)}}}},
		{"topic id, not name", registry.Registry{ID: "r4", EventNotificationConfigs: []registry.EventNotificationConfig{{PubsubTopicName: "events"}}}},
		{"bad state topic", registry.Registry{ID: "r5", StateNotificationConfig: registry.StateNotificationConfig{PubsubTopicName: "projects/p/subscriptions/s"}}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.CreateRegistry(ctx, "proj", "us-central1", tt.reg); !errors.Is(err, registry.ErrInvalidArgument) {
				t.Errorf("CreateRegistry(%+v) = %v, want ErrInvalidArgument", tt.reg, err)
			}
		})
	}
}

func TestDeviceLifecycle(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	key := registrytest.NewKey(t, registry.ES256PEM)
	expires := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	created := mustCreate(t, s, registry.Device{
		ID:          "dev1",
		Credentials: []registry.Credential{{PublicKey: key.PublicKey, ExpirationTime: expires}},
		Metadata:    map[string]string{"site": "lab"},
		DeviceClass: "thermometer",
		SchemaID:    "thermometer/v1",
		LogLevel:    registry.LogInfo,
		Config:      registry.DeviceConfig{BinaryData: []byte(`{"rate":1}`)},
	})
	if created.NumID == 0 || created.Status != registry.StatusActive || created.Config.Version != 1 ||
		string(created.Config.BinaryData) != `{"rate":1}` || created.Config.CloudUpdateTime.IsZero() {
		t.Errorf("created device = %+v, want a numId, ACTIVE, config version 1 with the data", created)
	}
	got, err := s.GetDevice(ctx, reg.Device("dev1"))
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	if !jsonEqual(t, got, created) {
		t.Errorf("GetDevice = %+v\nwant        %+v", got, created)
	}

	other := mustCreate(t, s, registry.Device{ID: "dev2"})
	if other.NumID == created.NumID {
		t.Errorf("two devices share numId %d", other.NumID)
	}

	patched, err := s.PatchDevice(ctx, reg.Device("dev1"), registry.Device{
		Blocked: true, Status: registry.StatusQuarantined,
		Metadata: map[string]string{"ignored": "not in the mask"}, DeviceClass: "hygrometer",
	}, []string{"blocked", "status", "device_class"})
	if err != nil {
		t.Fatalf("PatchDevice: %v", err)
	}
	want := created
	want.Blocked, want.Status, want.DeviceClass = true, registry.StatusQuarantined, "hygrometer"
	if !jsonEqual(t, patched, want) {
		t.Errorf("patched device = %+v\nwant             %+v", patched, want)
	}

	if err := s.DeleteDevice(ctx, reg.Device("dev1")); err != nil {
		t.Fatalf("DeleteDevice: %v", err)
	}
	if _, err := s.GetDevice(ctx, reg.Device("dev1")); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetDevice after delete = %v, want ErrNotFound", err)
	}
	if err := s.DeleteDevice(ctx, reg.Device("dev1")); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("second DeleteDevice = %v, want ErrNotFound", err)
	}
	if _, err := s.PatchDevice(ctx, reg.Device("dev1"), registry.Device{Blocked: true}, []string{"blocked"}); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("PatchDevice after delete = %v, want ErrNotFound (and no half device)", err)
	}
	if _, err := s.ModifyConfig(ctx, reg.Device("dev1"), 0, nil); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("ModifyConfig after delete = %v, want ErrNotFound", err)
	}
	// Nothing of the device is left, its numId included.
	tbl := rawTable(t)
	var keys []string
	tbl.ReadRows(ctx, bigtable.InfiniteRange(""), func(r bigtable.Row) bool { keys = append(keys, r.Key()); return true })
	wantKeys := []string{fmt.Sprintf("#numid/%020d", other.NumID), "proj/us-central1/reg", "proj/us-central1/reg/dev2"}
	if !slices.Equal(keys, wantKeys) {
		t.Errorf("rows after delete = %q, want %q", keys, wantKeys)
	}

	again := mustCreate(t, s, registry.Device{ID: "dev1"})
	if again.Blocked || again.Config.Version != 1 {
		t.Errorf("re-created device = %+v, want a fresh device", again)
	}
}

func TestCreateDeviceRefuses(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	mustCreate(t, s, registry.Device{ID: "taken"})
	tests := []struct {
		name string
		reg  registry.Path
		dev  registry.Device
		want error
	}{
		{"id too short", reg, registry.Device{ID: "ab"}, registry.ErrInvalidArgument},
		{"id led by a digit", reg, registry.Device{ID: "1abc"}, registry.ErrInvalidArgument},
		{"id led by goog", reg, registry.Device{ID: "goog-dev"}, registry.ErrInvalidArgument},
		{"slash in id", reg, registry.Device{ID: "a/bc"}, registry.ErrInvalidArgument},
		{"space in id", reg, registry.Device{ID: "a bc"}, registry.ErrInvalidArgument},
		{"id of 256 characters", reg, registry.Device{ID: "a" + strings.Repeat("b", 255)}, registry.ErrInvalidArgument},
		{"bad status", reg, registry.Device{ID: "dev", Status: "SLEEPING"}, registry.ErrInvalidArgument},
		{"bad log level", reg, registry.Device{ID: "dev", LogLevel: "VERBOSE"}, registry.ErrInvalidArgument},
		{"bad metadata key", reg, registry.Device{ID: "dev", Metadata: map[string]string{"a b": "x"}}, registry.ErrInvalidArgument},
		{"config too big", reg, registry.Device{ID: "dev", Config: registry.DeviceConfig{BinaryData: make([]byte, 64<<10+1)}}, registry.ErrInvalidArgument},
		{"existing id", reg, registry.Device{ID: "taken"}, registry.ErrAlreadyExists},
		{"unknown registry", registry.Path{Project: "proj", Location: "us-central1", Registry: "other"}, registry.Device{ID: "dev"}, registry.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.CreateDevice(ctx, tt.reg, tt.dev); !errors.Is(err, tt.want) {
				t.Errorf("CreateDevice(%s, %.40q) = %v, want %v", tt.reg, tt.dev.ID, err, tt.want)
			}
		})
	}
	for _, id := range []string{"abc", "A-b.c_d+e~f%g", "z" + strings.Repeat("9", 254)} {
		if _, err := s.CreateDevice(ctx, reg, registry.Device{ID: id}); err != nil {
			t.Errorf("CreateDevice(%.40q): %v", id, err)
		}
	}
	// The refused creations left no rows behind, numId claims included.
	devices, _, err := s.ListDevices(ctx, reg, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	numIDRows := 0
	rawTable(t).ReadRows(ctx, bigtable.PrefixRange("#numid/"), func(bigtable.Row) bool { numIDRows++; return true })
	if len(devices) != 4 || numIDRows != 4 {
		t.Errorf("%d devices and %d numId rows, want 4 of each", len(devices), numIDRows)
	}
}

func TestCredentials(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	var four []registry.Credential
	for _, f := range []registry.KeyFormat{registry.RSAPEM, registry.RSAX509PEM, registry.ES256PEM, registry.ES256X509PEM} {
		four = append(four, registry.Credential{PublicKey: registrytest.NewKey(t, f).PublicKey})
	}
	d := mustCreate(t, s, registry.Device{ID: "three", Credentials: four[:3]})
	if len(d.Credentials) != 3 {
		t.Errorf("created with %d credentials, want 3", len(d.Credentials))
	}
	if _, err := s.CreateDevice(ctx, reg, registry.Device{ID: "four", Credentials: four}); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("CreateDevice with 4 credentials = %v, want ErrInvalidArgument", err)
	}
	if _, err := s.PatchDevice(ctx, reg.Device("three"), registry.Device{Credentials: four}, []string{"credentials"}); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("PatchDevice with 4 credentials = %v, want ErrInvalidArgument", err)
	}
	if p, err := s.PatchDevice(ctx, reg.Device("three"), registry.Device{Credentials: four[3:]}, []string{"credentials"}); err != nil || len(p.Credentials) != 1 {
		t.Errorf("PatchDevice with 1 credential = %+v, %v", p.Credentials, err)
	}

	rsaKey, ecKey := four[0].PublicKey, four[2].PublicKey
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		key  registry.PublicKey
	}{
		{"not PEM", registry.PublicKey{Format: registry.RSAPEM, Key: "hello"}},
		{"empty", registry.PublicKey{Format: registry.ES256PEM}},
		{"unknown format", registry.PublicKey{Format: "DSA_PEM", Key: rsaKey.Key}},
		{"no format", registry.PublicKey{Key: rsaKey.Key}},
		{"RSA key as ES256", registry.PublicKey{Format: registry.ES256PEM, Key: rsaKey.Key}},
		{"EC key as RSA", registry.PublicKey{Format: registry.RSAPEM, Key: ecKey.Key}},
		{"public key as certificate", registry.PublicKey{Format: registry.RSAX509PEM, Key: rsaKey.Key}},
		{"certificate as public key", registry.PublicKey{Format: registry.ES256PEM, Key: four[3].PublicKey.Key}},
		{"corrupt body", registry.PublicKey{Format: registry.RSAPEM, Key: strings.Replace(rsaKey.Key, "A", "*", 5)}},
		{"two blocks", registry.PublicKey{Format: registry.RSAPEM, Key: rsaKey.Key + rsaKey.Key}},
		{"1024-bit RSA", registrytest.Encode(t, smallRSA.Public(), smallRSA, registry.RSAPEM)},
		{"P-384", registrytest.Encode(t, p384.Public(), p384, registry.ES256PEM)},
		{"P-384 certificate", registrytest.Encode(t, p384.Public(), p384, registry.ES256X509PEM)},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.CreateDevice(ctx, reg, registry.Device{ID: "bad-key", Credentials: []registry.Credential{{PublicKey: tt.key}}})
			if !errors.Is(err, registry.ErrInvalidArgument) {
				t.Errorf("CreateDevice = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

func TestPatchDeviceRefuses(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	before := mustCreate(t, s, registry.Device{ID: "dev1", Metadata: map[string]string{"a": "1"}})
	tests := []struct {
		name string
		dev  registry.Device
		mask []string
	}{
		{"empty mask", registry.Device{Blocked: true}, nil},
		{"unknown path", registry.Device{}, []string{"numId"}},
		{"id is not patchable", registry.Device{ID: "other"}, []string{"id"}},
		{"bad status", registry.Device{Status: "GONE"}, []string{"status"}},
		{"empty status", registry.Device{}, []string{"status"}},
		{"bad key in a valid mask", registry.Device{Blocked: true, Credentials: []registry.Credential{{PublicKey: registry.PublicKey{Format: registry.RSAPEM, Key: "x"}}}},
			[]string{"blocked", "credentials"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.PatchDevice(ctx, reg.Device("dev1"), tt.dev, tt.mask); !errors.Is(err, registry.ErrInvalidArgument) {
				t.Errorf("PatchDevice(%v) = %v, want ErrInvalidArgument", tt.mask, err)
			}
		})
	}
	after, err := s.GetDevice(ctx, reg.Device("dev1"))
	if err != nil || !jsonEqual(t, after, before) {
		t.Errorf("device after refused patches = %+v, %v; want unchanged %+v", after, err, before)
	}
	// camelCase and snake_case paths both work; clearing metadata works.
	p, err := s.PatchDevice(ctx, reg.Device("dev1"), registry.Device{LogLevel: registry.LogDebug, SchemaID: "s/v2"},
		[]string{"logLevel", "schema_id", "metadata"})
	if err != nil || p.LogLevel != registry.LogDebug || p.SchemaID != "s/v2" || p.Metadata != nil {
		t.Errorf("PatchDevice = %+v, %v", p, err)
	}
}

func TestListDevicesPages(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	// A registry whose name extends reg's must not leak into its listing.
	if _, err := s.CreateRegistry(ctx, reg.Project, reg.Location, registry.Registry{ID: "reg2"}); err != nil {
		t.Fatal(err)
	}
	reg2 := registry.Path{Project: reg.Project, Location: reg.Location, Registry: "reg2"}
	if _, err := s.CreateDevice(ctx, reg2, registry.Device{ID: "aaa-in-reg2"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"dev-a", "dev-b", "dev-c", "dev-d", "dev-e"}
	for _, id := range slices.Backward(want) {
		mustCreate(t, s, registry.Device{ID: id})
	}

	var got []string
	token := ""
	for page := 0; ; page++ {
		devices, next, err := s.ListDevices(ctx, reg, 2, token)
		if err != nil {
			t.Fatalf("ListDevices page %d: %v", page, err)
		}
		if len(devices) > 2 {
			t.Fatalf("page %d has %d devices, want at most 2", page, len(devices))
		}
		for _, d := range devices {
			if d.NumID == 0 {
				t.Errorf("listed device %+v has no numId", d)
			}
			got = append(got, d.ID)
		}
		if next == "" {
			break
		}
		token = next
	}
	if !slices.Equal(got, want) {
		t.Errorf("listed %q, want %q", got, want)
	}
	all, next, err := s.ListDevices(ctx, reg, 0, "")
	if err != nil || len(all) != 5 || next != "" {
		t.Errorf("ListDevices with default page size = %d devices, next %q, %v", len(all), next, err)
	}
	if _, _, err := s.ListDevices(ctx, reg, 2, "!!not a token"); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("ListDevices with a bad token = %v, want ErrInvalidArgument", err)
	}
	empty := registry.Path{Project: reg.Project, Location: reg.Location, Registry: "none"}
	if devices, next, err := s.ListDevices(ctx, empty, 2, ""); err != nil || len(devices) != 0 || next != "" {
		t.Errorf("ListDevices of an empty registry = %v, %q, %v", devices, next, err)
	}
}

func TestModifyConfigOptimisticConcurrency(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	dev := reg.Device("dev1")
	mustCreate(t, s, registry.Device{ID: "dev1"})

	cfg, err := s.ModifyConfig(ctx, dev, 1, []byte("v2"))
	if err != nil || cfg.Version != 2 || string(cfg.BinaryData) != "v2" {
		t.Fatalf("ModifyConfig(version 1) = %+v, %v; want version 2", cfg, err)
	}
	_, err = s.ModifyConfig(ctx, dev, 1, []byte("stale"))
	var conflict *registry.VersionConflictError
	if !errors.As(err, &conflict) || !errors.Is(err, registry.ErrFailedPrecondition) || conflict.Current != 2 || conflict.VersionToUpdate != 1 {
		t.Fatalf("ModifyConfig(stale version 1) = %v, want a VersionConflictError (FAILED_PRECONDITION) with current 2", err)
	}
	if cfg, err := s.ModifyConfig(ctx, dev, 0, []byte("v3")); err != nil || cfg.Version != 3 {
		t.Fatalf("ModifyConfig(version 0) = %+v, %v; want version 3", cfg, err)
	}
	for _, bad := range []struct {
		version int64
		data    []byte
	}{{-1, nil}, {3, make([]byte, 64<<10+1)}} {
		if _, err := s.ModifyConfig(ctx, dev, bad.version, bad.data); !errors.Is(err, registry.ErrInvalidArgument) {
			t.Errorf("ModifyConfig(%d, %d bytes) = %v, want ErrInvalidArgument", bad.version, len(bad.data), err)
		}
	}

	// Writers that all read version 3 race; the check-and-write is atomic,
	// so exactly one of them gets version 4.
	const writers = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		won     []string
		refused int
		start   = make(chan struct{})
	)
	for i := range writers {
		wg.Go(func() {
			<-start
			data := fmt.Sprint("writer-", i)
			_, err := s.ModifyConfig(ctx, dev, 3, []byte(data))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won = append(won, data)
			case errors.Is(err, registry.ErrFailedPrecondition):
				refused++
			default:
				t.Errorf("writer %d: %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(won) != 1 || refused != writers-1 {
		t.Fatalf("%d writers won (%q), %d refused; want exactly 1 and %d", len(won), won, refused, writers-1)
	}
	d, err := s.GetDevice(ctx, dev)
	if err != nil || d.Config.Version != 4 || string(d.Config.BinaryData) != won[0] {
		t.Errorf("device config = %+v, %v; want version 4 with the winner's %q", d.Config, err, won[0])
	}

	// Unconditional writers all land, each on its own version.
	if raceDetector {
		t.Skip("concurrent reads and writes of a row trip a data race inside bttest (see race_test.go)")
	}
	for range writers {
		wg.Go(func() {
			if _, err := s.ModifyConfig(ctx, dev, 0, []byte("any")); err != nil {
				t.Errorf("ModifyConfig(version 0): %v", err)
			}
		})
	}
	wg.Wait()
	if d, err := s.GetDevice(ctx, dev); err != nil || d.Config.Version != 4+writers {
		t.Errorf("after %d unconditional updates, config version = %d, %v; want %d", writers, d.Config.Version, err, 4+writers)
	}
}

func TestConfigKeepsTenVersions(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	dev := reg.Device("dev1")
	mustCreate(t, s, registry.Device{ID: "dev1", Config: registry.DeviceConfig{BinaryData: []byte("v1")}})
	for v := int64(2); v <= 15; v++ {
		if _, err := s.ModifyConfig(ctx, dev, v-1, fmt.Appendf(nil, "v%d", v)); err != nil {
			t.Fatalf("ModifyConfig to version %d: %v", v, err)
		}
	}
	versions, err := s.ConfigVersions(ctx, dev)
	if err != nil {
		t.Fatalf("ConfigVersions: %v", err)
	}
	var got []string
	for _, c := range versions {
		got = append(got, fmt.Sprintf("%d:%s", c.Version, c.BinaryData))
	}
	want := []string{"15:v15", "14:v14", "13:v13", "12:v12", "11:v11", "10:v10", "9:v9", "8:v8", "7:v7", "6:v6"}
	if !slices.Equal(got, want) {
		t.Errorf("kept versions %q, want %q", got, want)
	}
	if _, err := s.ConfigVersions(ctx, reg.Device("nope")); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("ConfigVersions of an unknown device = %v, want ErrNotFound", err)
	}
}

// clock is a settable clock for the cache.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestLookupCache(t *testing.T) {
	clk := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := start(t, registry.Config{CacheTTL: 5 * time.Second, Now: clk.Now})
	ctx := t.Context()
	dev := reg.Device("dev1")
	tbl := rawTable(t)
	// blockBehindTheStoresBack sets blocked the way another replica would.
	blockBehindTheStoresBack := func(blocked bool) {
		t.Helper()
		m := bigtable.NewMutation()
		m.DeleteCellsInColumn(schemas.FamilyDeviceFields, "blocked")
		m.Set(schemas.FamilyDeviceFields, "blocked", bigtable.Now().TruncateToMilliseconds(), []byte(fmt.Sprint(blocked)))
		if err := tbl.Apply(ctx, "proj/us-central1/reg/dev1", m); err != nil {
			t.Fatal(err)
		}
	}
	lookup := func() (registry.Device, error) {
		t.Helper()
		return s.LookupDevice(ctx, dev)
	}

	// Unknown devices are cached too, and creating one forgets that.
	if _, err := lookup(); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("LookupDevice before create = %v, want ErrNotFound", err)
	}
	mustCreate(t, s, registry.Device{ID: "dev1"})
	if d, err := lookup(); err != nil || d.Blocked {
		t.Fatalf("LookupDevice after create = %+v, %v", d, err)
	}

	blockBehindTheStoresBack(true)
	if d, _ := lookup(); d.Blocked {
		t.Error("LookupDevice saw a change made elsewhere before the TTL passed: not cached")
	}
	if d, _ := s.GetDevice(ctx, dev); !d.Blocked {
		t.Error("GetDevice did not see the change: it must not be cached")
	}
	clk.Advance(5 * time.Second)
	if d, _ := lookup(); !d.Blocked {
		t.Error("LookupDevice still cached after the TTL")
	}

	// Each write through the Store is visible to the next lookup.
	writes := []struct {
		name  string
		write func() error
		check func(registry.Device) bool
	}{
		{"patch", func() error {
			_, err := s.PatchDevice(ctx, dev, registry.Device{Blocked: false}, []string{"blocked"})
			return err
		}, func(d registry.Device) bool { return !d.Blocked }},
		{"modify config", func() error {
			_, err := s.ModifyConfig(ctx, dev, 0, []byte("new"))
			return err
		}, func(d registry.Device) bool { return string(d.Config.BinaryData) == "new" }},
		{"delete", func() error { return s.DeleteDevice(ctx, dev) },
			func(registry.Device) bool { _, err := lookup(); return errors.Is(err, registry.ErrNotFound) }},
	}
	for _, w := range writes {
		if _, err := lookup(); err != nil { // cache it
			t.Fatal(err)
		}
		if err := w.write(); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		d, _ := lookup()
		if !w.check(d) {
			t.Errorf("after %s, LookupDevice = %+v: stale cache", w.name, d)
		}
	}

	// A caller changing what it got does not change the cache.
	mustCreate(t, s, registry.Device{ID: "dev1", Metadata: map[string]string{"k": "v"}})
	d, _ := lookup()
	d.Metadata["k"] = "changed"
	if again, _ := lookup(); again.Metadata["k"] != "v" {
		t.Error("a caller's change to a looked-up device reached the cache")
	}

	// Registries are cached the same way.
	if r, err := s.LookupRegistry(ctx, reg); err != nil || r.ID != "reg" {
		t.Errorf("LookupRegistry = %+v, %v", r, err)
	}
}

func TestCacheOff(t *testing.T) {
	s := start(t, registry.Config{CacheTTL: -1})
	mustCreate(t, s, registry.Device{ID: "dev1"})
	if _, err := s.LookupDevice(t.Context(), reg.Device("dev1")); err != nil {
		t.Fatal(err)
	}
	m := bigtable.NewMutation()
	m.Set(schemas.FamilyDeviceFields, "blocked", bigtable.Now().TruncateToMilliseconds(), []byte("true"))
	if err := rawTable(t).Apply(t.Context(), "proj/us-central1/reg/dev1", m); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.LookupDevice(t.Context(), reg.Device("dev1")); !d.Blocked {
		t.Error("with CacheTTL < 0, LookupDevice served a cached device")
	}
}

func TestEventTopic(t *testing.T) {
	routed := registry.Registry{ID: "r", EventNotificationConfigs: []registry.EventNotificationConfig{
		{SubfolderMatches: "alerts", PubsubTopicName: "projects/p/topics/alerts"},
		{SubfolderMatches: "a/b", PubsubTopicName: "projects/p/topics/ab"},
		{PubsubTopicName: "projects/p/topics/all"},
	}}
	exactOnly := registry.Registry{ID: "r", EventNotificationConfigs: []registry.EventNotificationConfig{
		{SubfolderMatches: "alerts", PubsubTopicName: "projects/p/topics/alerts"},
	}}
	tests := []struct {
		name      string
		reg       registry.Registry
		subFolder string
		topic     string
		ok        bool
	}{
		{"exact match", routed, "alerts", "projects/p/topics/alerts", true},
		{"multi-level match", routed, "a/b", "projects/p/topics/ab", true},
		{"prefix is no match", routed, "alerts/high", "projects/p/topics/all", true},
		{"no subfolder goes to the catch-all", routed, "", "projects/p/topics/all", true},
		{"other subfolder goes to the catch-all", routed, "metrics", "projects/p/topics/all", true},
		{"no catch-all", exactOnly, "metrics", "", false},
		{"no catch-all, no subfolder", exactOnly, "", "", false},
		{"no configs", registry.Registry{ID: "r"}, "alerts", "", false},
		{"first match wins", registry.Registry{EventNotificationConfigs: []registry.EventNotificationConfig{
			{SubfolderMatches: "x", PubsubTopicName: "projects/p/topics/first"},
			{SubfolderMatches: "x", PubsubTopicName: "projects/p/topics/second"},
		}}, "x", "projects/p/topics/first", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topic, ok := registry.EventTopic(tt.reg, tt.subFolder)
			if topic != tt.topic || ok != tt.ok {
				t.Errorf("EventTopic(%q) = %q, %v; want %q, %v", tt.subFolder, topic, ok, tt.topic, tt.ok)
			}
		})
	}
}

// The JSON is IoT Core's: camelCase names, numId and version as strings,
// binaryData as base64, RFC 3339 times, empty fields omitted.
func TestDeviceJSON(t *testing.T) {
	d := registry.Device{
		ID: "dev1", NumID: 2820826361193805,
		Credentials: []registry.Credential{{
			PublicKey:      registry.PublicKey{Format: registry.ES256PEM, Key: "-----BEGIN PUBLIC KEY-----\n..."},
			ExpirationTime: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		}},
		Blocked: true, Metadata: map[string]string{"k": "v"}, Status: registry.StatusActive, LogLevel: registry.LogError,
		Config:            registry.DeviceConfig{Version: 3, CloudUpdateTime: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC), BinaryData: []byte("hi")},
		LastHeartbeatTime: time.Date(2024, 5, 6, 7, 8, 10, 0, time.UTC),
		LastErrorStatus:   &registry.ErrorStatus{Code: 9, Message: "mqtt: config not acked"},
	}
	got, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"dev1","numId":"2820826361193805","credentials":[{"publicKey":{"format":"ES256_PEM","key":"-----BEGIN PUBLIC KEY-----\n..."},"expirationTime":"2030-01-01T00:00:00Z"}],` +
		`"blocked":true,"metadata":{"k":"v"},"status":"ACTIVE","logLevel":"ERROR",` +
		`"config":{"version":"3","cloudUpdateTime":"2024-05-06T07:08:09Z","binaryData":"aGk="},` +
		`"lastHeartbeatTime":"2024-05-06T07:08:10Z","lastErrorStatus":{"code":9,"message":"mqtt: config not acked"}}`
	if string(got) != want {
		t.Errorf("JSON =\n%s\nwant\n%s", got, want)
	}
	var back registry.Device
	if err := json.Unmarshal(got, &back); err != nil || !jsonEqual(t, back, d) {
		t.Errorf("round trip = %+v, %v", back, err)
	}
	if b, _ := json.Marshal(registry.Device{ID: "bare"}); string(b) != `{"id":"bare"}` {
		t.Errorf("bare device JSON = %s", b)
	}
}

func TestInvalidPaths(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := context.Background()
	badDev := iotcore.DevicePath{Project: "proj", Location: "us-central1", Registry: "reg", Device: "a/b"}
	if _, err := s.GetDevice(ctx, badDev); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("GetDevice(%s) = %v, want ErrInvalidArgument", badDev, err)
	}
	if _, err := s.LookupDevice(ctx, badDev); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("LookupDevice(%s) = %v, want ErrInvalidArgument", badDev, err)
	}
	if _, _, err := s.ListDevices(ctx, registry.Path{Project: "proj"}, 0, ""); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("ListDevices of an incomplete path = %v, want ErrInvalidArgument", err)
	}
}

// jsonEqual compares two values by their JSON, which is what the registry promises to keep.
func jsonEqual(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ja) == string(jb)
}
