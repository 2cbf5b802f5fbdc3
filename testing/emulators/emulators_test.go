package emulators

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/bigtable"
	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/storage"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	testProject  = "test-project"
	testInstance = "test-instance"
)

var testResources = Resources{
	Project:        testProject,
	Instance:       testInstance,
	Topics:         []string{"events", "dead-letter"},
	Subscriptions:  map[string]string{"events-sub": "events"},
	BigtableTables: map[string][]string{"telemetry": {"m", "meta"}},
	Buckets:        []string{"archive"},
}

// start runs emulators on free ports, closed when the test ends.
func start(t *testing.T, cfg Config) *Emulators {
	t.Helper()
	e, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start(%+v): %v", cfg, err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

// startProvisioned also points this process's Google clients at the emulators
// through Env, the way every binary of the project will find them.
func startProvisioned(t *testing.T) *Emulators {
	t.Helper()
	e := start(t, Config{})
	for k, v := range e.Env() {
		t.Setenv(k, v)
	}
	// Twice: provisioning runs on every sandbox start and must be idempotent.
	for i := range 2 {
		if err := e.Provision(t.Context(), testResources); err != nil {
			t.Fatalf("Provision #%d: %v", i+1, err)
		}
	}
	return e
}

func TestEnv(t *testing.T) {
	e := start(t, Config{})
	env := e.Env()
	tests := []struct {
		key, want string
	}{
		{"PUBSUB_EMULATOR_HOST", e.PubsubAddr},
		{"BIGTABLE_EMULATOR_HOST", e.BigtableAddr},
		{"STORAGE_EMULATOR_HOST", "http://" + e.GCSAddr},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if got := env[tt.key]; got != tt.want {
				t.Errorf("Env()[%q] = %q, want %q", tt.key, got, tt.want)
			}
			if _, port, err := net.SplitHostPort(strings.TrimPrefix(tt.want, "http://")); err != nil || port == "0" {
				t.Errorf("%s = %q is not a bound host:port (%v)", tt.key, tt.want, err)
			}
		})
	}
	if len(env) != len(tests) {
		t.Errorf("Env() has %d variables, want %d: %v", len(env), len(tests), env)
	}
}

// TestServices drives each emulator with the real Google client library,
// configured only through the variables Env returns.
func TestServices(t *testing.T) {
	startProvisioned(t)
	tests := []struct {
		name string
		run  func(t *testing.T, ctx context.Context)
	}{
		{"pubsub publish and pull", testPubsub},
		{"bigtable write and read", testBigtable},
		// The Go client reads through the XML API unless told otherwise; that
		// path only routes when the fake's PublicHost is its bound address.
		{"gcs write and XML read", func(t *testing.T, ctx context.Context) { testGCS(t, ctx) }},
		{"gcs write and JSON read", func(t *testing.T, ctx context.Context) { testGCS(t, ctx, storage.WithJSONReads()) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			tt.run(t, ctx)
		})
	}
}

func testPubsub(t *testing.T, ctx context.Context) {
	c, err := pubsub.NewClient(ctx, testProject)
	if err != nil {
		t.Fatalf("pubsub.NewClient: %v", err)
	}
	defer c.Close()

	sub, err := c.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{
		Subscription: "projects/" + testProject + "/subscriptions/events-sub",
	})
	if err != nil {
		t.Fatalf("GetSubscription: %v", err)
	}
	if sub.AckDeadlineSeconds != subscriptionAckDeadlineSeconds {
		t.Errorf("ack deadline = %d s, want %d s", sub.AckDeadlineSeconds, subscriptionAckDeadlineSeconds)
	}

	pub := c.Publisher("events")
	id, err := pub.Publish(ctx, &pubsub.Message{
		Data:       []byte(`{"seq":1}`),
		Attributes: map[string]string{"deviceId": "d1"},
	}).Get(ctx)
	pub.Stop()
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}

	got := make(chan *pubsub.Message, 1)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	err = c.Subscriber("events-sub").Receive(rctx, func(_ context.Context, m *pubsub.Message) {
		m.Ack()
		select {
		case got <- m:
		default:
		}
		stop()
	})
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	select {
	case m := <-got:
		if m.ID != id || string(m.Data) != `{"seq":1}` || m.Attributes["deviceId"] != "d1" {
			t.Errorf("received id=%s data=%q attrs=%v, want id=%s data=%q deviceId=d1", m.ID, m.Data, m.Attributes, id, `{"seq":1}`)
		}
	default:
		t.Fatalf("Receive returned without a message: %v", ctx.Err())
	}
}

func testBigtable(t *testing.T, ctx context.Context) {
	ac, err := bigtable.NewAdminClient(ctx, testProject, testInstance)
	if err != nil {
		t.Fatalf("bigtable.NewAdminClient: %v", err)
	}
	defer ac.Close()
	info, err := ac.TableInfo(ctx, "telemetry")
	if err != nil {
		t.Fatalf("TableInfo: %v", err)
	}
	if fams := slices.Sorted(slices.Values(info.Families)); !slices.Equal(fams, []string{"m", "meta"}) {
		t.Errorf("column families = %v, want [m meta]", fams)
	}

	c, err := bigtable.NewClient(ctx, testProject, testInstance)
	if err != nil {
		t.Fatalf("bigtable.NewClient: %v", err)
	}
	defer c.Close()
	tbl := c.Open("telemetry")
	ts := bigtable.Time(time.UnixMilli(1_700_000_000_000))
	mut := bigtable.NewMutation()
	mut.Set("m", "temperature", ts, []byte("23.4"))
	if err := tbl.Apply(ctx, "d1#0001", mut); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	row, err := tbl.ReadRow(ctx, "d1#0001")
	if err != nil {
		t.Fatalf("ReadRow: %v", err)
	}
	items := row["m"]
	if len(items) != 1 || items[0].Column != "m:temperature" || string(items[0].Value) != "23.4" || items[0].Timestamp != ts {
		t.Errorf("row = %+v, want one cell m:temperature=23.4 @%d", row, ts)
	}
}

func testGCS(t *testing.T, ctx context.Context, opts ...option.ClientOption) {
	if os.Getenv("STORAGE_EMULATOR_HOST") == "" {
		t.Fatal("STORAGE_EMULATOR_HOST is not set")
	}
	c, err := storage.NewClient(ctx, opts...)
	if err != nil {
		t.Fatalf("storage.NewClient: %v", err)
	}
	defer c.Close()
	obj := c.Bucket("archive").Object("raw/2024/01/01/part-0001.jsonl")
	want := `{"device_id":"d1","seq":1}` + "\n"

	w := obj.NewWriter(ctx)
	w.ContentType = "application/x-ndjson"
	if _, err := io.WriteString(w, want); err != nil {
		t.Fatalf("write object: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("close object writer: %v", err)
	}
	r, err := obj.NewReader(ctx)
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read object: %v", err)
	}
	if string(got) != want {
		t.Errorf("object = %q, want %q", got, want)
	}
}

func TestFailBigtableWrites(t *testing.T) {
	e := startProvisioned(t)
	ctx := t.Context()
	c, err := bigtable.NewClient(ctx, testProject, testInstance)
	if err != nil {
		t.Fatalf("bigtable.NewClient: %v", err)
	}
	defer c.Close()
	tbl := c.Open("telemetry")

	// Cells stamped ServerTime are not idempotent, so the client sends each
	// Apply exactly once instead of retrying Unavailable: one Apply, one call.
	apply := func(row string) func(context.Context) error {
		return func(ctx context.Context) error {
			m := bigtable.NewMutation()
			m.Set("m", "v", bigtable.ServerTime, []byte(row))
			return tbl.Apply(ctx, row, m)
		}
	}
	checkAndApply := func(row string) func(context.Context) error {
		return func(ctx context.Context) error {
			m := bigtable.NewMutation()
			m.Set("m", "v", bigtable.ServerTime, []byte(row))
			return tbl.Apply(ctx, row, bigtable.NewCondMutation(bigtable.PassAllFilter(), nil, m))
		}
	}
	// ApplyBulk retries a failed MutateRows stream whatever the cells.
	applyBulk := func(row string) func(context.Context) error {
		return func(ctx context.Context) error {
			m := bigtable.NewMutation()
			m.Set("m", "v", bigtable.Now(), []byte(row))
			errs, err := tbl.ApplyBulk(ctx, []string{row}, []*bigtable.Mutation{m})
			return errors.Join(append(errs, err)...)
		}
	}
	clear := func(context.Context) error { e.ClearBigtableFaults(); return nil }

	type step struct {
		do   func(context.Context) error
		want codes.Code
	}
	tests := []struct {
		name         string
		arm          int
		steps        []step
		stored       []string // rows that must exist afterwards
		lost         []string // rows whose write failed and must not exist
		wantCalls    int64
		wantFailures int64
	}{
		{
			name: "two faults then success",
			arm:  2,
			steps: []step{
				{apply("two/1"), codes.Unavailable},
				{apply("two/2"), codes.Unavailable},
				{apply("two/3"), codes.OK},
			},
			stored:    []string{"two/3"},
			lost:      []string{"two/1", "two/2"},
			wantCalls: 3, wantFailures: 2,
		},
		{
			name: "until cleared",
			arm:  -1,
			steps: []step{
				{apply("forever/1"), codes.Unavailable},
				{checkAndApply("forever/2"), codes.Unavailable},
				{apply("forever/3"), codes.Unavailable},
				{clear, codes.OK},
				{apply("forever/4"), codes.OK},
			},
			stored:    []string{"forever/4"},
			lost:      []string{"forever/1", "forever/2", "forever/3"},
			wantCalls: 4, wantFailures: 3,
		},
		{
			name:      "check-and-mutate after one fault",
			arm:       1,
			steps:     []step{{checkAndApply("cam/1"), codes.Unavailable}, {checkAndApply("cam/2"), codes.OK}},
			stored:    []string{"cam/2"},
			lost:      []string{"cam/1"},
			wantCalls: 2, wantFailures: 1,
		},
		{
			name:      "bulk write retried through two faults",
			arm:       2,
			steps:     []step{{applyBulk("bulk/1"), codes.OK}},
			stored:    []string{"bulk/1"},
			wantCalls: 3, wantFailures: 2,
		},
		{
			name:      "zero arms nothing",
			arm:       0,
			steps:     []step{{apply("zero/1"), codes.OK}},
			stored:    []string{"zero/1"},
			wantCalls: 1, wantFailures: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Cleanup(e.ClearBigtableFaults)
			calls0, failures0 := e.BigtableWriteCalls(), e.BigtableWriteFailures()
			e.FailBigtableWrites(tt.arm)
			for i, s := range tt.steps {
				ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := s.do(ctx)
				cancel()
				if got := status.Code(err); got != s.want {
					t.Errorf("step %d: code %v (err %v), want %v", i, got, err, s.want)
				}
			}
			if got := e.BigtableWriteCalls() - calls0; got != tt.wantCalls {
				t.Errorf("write calls = %d, want %d", got, tt.wantCalls)
			}
			if got := e.BigtableWriteFailures() - failures0; got != tt.wantFailures {
				t.Errorf("write failures = %d, want %d", got, tt.wantFailures)
			}
			for _, key := range append(slices.Clone(tt.stored), tt.lost...) {
				row, err := tbl.ReadRow(ctx, key)
				if err != nil {
					t.Fatalf("ReadRow(%q): %v", key, err)
				}
				if exists, want := len(row) > 0, slices.Contains(tt.stored, key); exists != want {
					t.Errorf("row %q exists = %v, want %v", key, exists, want)
				}
			}
		})
	}
}

func TestStartPortTaken(t *testing.T) {
	tests := []struct {
		name string
		set  func(c *Config, port int)
		flag string
	}{
		{"pubsub", func(c *Config, p int) { c.PubsubPort = p }, "-pubsub_port"},
		{"bigtable", func(c *Config, p int) { c.BigtablePort = p }, "-bigtable_port"},
		{"gcs", func(c *Config, p int) { c.GCSPort = p }, "-gcs_port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			taken, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer taken.Close()
			cfg := Config{}
			tt.set(&cfg, taken.Addr().(*net.TCPAddr).Port)

			e, err := Start(cfg)
			if err == nil {
				e.Close()
				t.Fatalf("Start with %s port %s taken succeeded", tt.name, taken.Addr())
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("error %q does not wrap EADDRINUSE", err)
			}
			for _, part := range []string{tt.name + " emulator", taken.Addr().String(), "address already in use", tt.flag} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not mention %q", err, part)
				}
			}
		})
	}
}

func TestWarehouse(t *testing.T) {
	explicit := filepath.Join(t.TempDir(), "nested", "warehouse.duckdb")
	tests := []struct {
		name            string
		path            string
		keptAfterClose  bool
		wantPathPattern string
	}{
		{"temporary", "", false, filepath.Join(os.TempDir(), "iotpipe-*", "warehouse.duckdb")},
		{"explicit", explicit, true, explicit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Start(Config{WarehousePath: tt.path})
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			defer e.Close()
			if ok, _ := filepath.Match(tt.wantPathPattern, e.WarehousePath); !ok {
				t.Errorf("WarehousePath = %q, want %q", e.WarehousePath, tt.wantPathPattern)
			}
			if _, err := os.Stat(e.WarehousePath); err != nil {
				t.Fatalf("warehouse file after Start: %v", err)
			}
			// Start must not keep the file open: the warehouse sink opens it next.
			db, err := sql.Open("duckdb", e.WarehousePath)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(t.Context(), "CREATE TABLE probe AS SELECT 1 AS x"); err != nil {
				t.Errorf("write to warehouse after Start: %v", err)
			}
			db.Close()

			if err := e.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			_, err = os.Stat(e.WarehousePath)
			if kept := err == nil; kept != tt.keptAfterClose {
				t.Errorf("file kept after Close = %v (stat: %v), want %v", kept, err, tt.keptAfterClose)
			}
		})
	}
}

func TestCloseReleasesPorts(t *testing.T) {
	e, err := Start(Config{})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	for i := range 2 {
		if err := e.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	for _, addr := range []string{e.PubsubAddr, e.BigtableAddr, e.GCSAddr} {
		t.Run(addr, func(t *testing.T) {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatalf("port still held after Close: %v", err)
			}
			l.Close()
		})
	}
}

func TestRegisterFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want Config
	}{
		{"defaults", nil, DefaultConfig()},
		{
			"all set",
			[]string{"-emulator_host=0.0.0.0", "-pubsub_port=0", "-bigtable_port=9086", "-gcs_port=9443", "-warehouse=/data/w.duckdb"},
			Config{Host: "0.0.0.0", PubsubPort: 0, BigtablePort: 9086, GCSPort: 9443, WarehousePath: "/data/w.duckdb"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			cfg.RegisterFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatalf("Parse(%q): %v", tt.args, err)
			}
			if cfg != tt.want {
				t.Errorf("config = %+v, want %+v", cfg, tt.want)
			}
		})
	}
}
