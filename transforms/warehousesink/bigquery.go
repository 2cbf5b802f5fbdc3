package warehousesink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"cloud.google.com/go/bigquery/storage/managedwriter/adapt"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/iotpipe/iotpipe/schemas"
)

// BigQueryEmulatorHostEnv names the variable that points the BigQuery
// backend at a local Storage Write API server (host:port) when
// Config.BigQueryEmulator is empty. No Google client reads a variable for
// that API, so this is the sink's own, read only where the client is built.
const BigQueryEmulatorHostEnv = "BIGQUERY_STORAGE_EMULATOR_HOST"

const (
	// maxAppendBytes bounds the rows of one AppendRows request, well under
	// the API's 10 MB request limit.
	maxAppendBytes = 4 << 20
	// bigQueryWriteTimeout bounds one bundle's appends, the client's own
	// retries included, so a server that never answers fails the bundle
	// (and so redelivers its messages) instead of stalling the pipeline.
	bigQueryWriteTimeout = 2 * time.Minute
)

// BigQueryDescriptor returns the protocol buffer message a row of table is
// sent as, and its self-contained form for the stream's writer schema. Both
// derive from the table's JSON schema in the schemas package, the file
// Terraform creates the table from, through the client library's own
// conversions; TIMESTAMP columns are int64 microseconds since the epoch.
func BigQueryDescriptor(table string) (protoreflect.MessageDescriptor, *descriptorpb.DescriptorProto, error) {
	b, err := schemas.WarehouseSchemaJSON(table)
	if err != nil {
		return nil, nil, err
	}
	schema, err := bigquery.SchemaFromJSON(b)
	if err != nil {
		return nil, nil, fmt.Errorf("warehouse table %s: BigQuery schema: %w", table, err)
	}
	ts, err := adapt.BQSchemaToStorageTableSchema(schema)
	if err != nil {
		return nil, nil, fmt.Errorf("warehouse table %s: storage schema: %w", table, err)
	}
	d, err := adapt.StorageSchemaToProto2Descriptor(ts, "root")
	if err != nil {
		return nil, nil, fmt.Errorf("warehouse table %s: proto descriptor: %w", table, err)
	}
	md, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, nil, fmt.Errorf("warehouse table %s: proto descriptor is a %T, not a message", table, d)
	}
	dp, err := adapt.NormalizeDescriptor(md)
	if err != nil {
		return nil, nil, fmt.Errorf("warehouse table %s: normalize descriptor: %w", table, err)
	}
	return md, dp, nil
}

// bigQueryTable appends one bundle's rows to a table's default stream: rows
// go out in requests of up to maxAppendBytes as they accumulate, and commit
// waits for every request's result.
type bigQueryTable struct {
	client *sharedBigQuery
	table  string // projects/{p}/datasets/{d}/tables/{t}
	schema *descriptorpb.DescriptorProto
	md     protoreflect.MessageDescriptor
	fields []protoreflect.FieldDescriptor // per column

	// stream is nil until the first append, and again after a failed one,
	// so that a broken stream is replaced rather than reused.
	stream *managedwriter.ManagedStream

	bundleCtx context.Context // bounds the bundle's appends
	cancel    context.CancelFunc
	batch     [][]byte
	bytes     int
	results   []*managedwriter.AppendResult
	sent      int // rows in results
}

func openBigQueryTable(ctx context.Context, t target, table string, columns []string) (*bigQueryTable, error) {
	md, dp, err := BigQueryDescriptor(table)
	if err != nil {
		return nil, err
	}
	fields := make([]protoreflect.FieldDescriptor, len(columns))
	for i, c := range columns {
		fields[i] = md.Fields().ByName(protoreflect.Name(c))
		if fields[i] == nil {
			return nil, fmt.Errorf("warehouse table %s has no column %q that the sink writes", table, c)
		}
	}
	if n := md.Fields().Len(); n != len(columns) {
		return nil, fmt.Errorf("warehouse table %s has %d columns; the sink writes %d", table, n, len(columns))
	}
	client, err := acquireBigQuery(ctx, t.project, t.emulator)
	if err != nil {
		return nil, err
	}
	w := &bigQueryTable{
		client: client,
		table:  managedwriter.TableParentFromParts(t.project, t.dataset, table),
		schema: dp,
		md:     md,
		fields: fields,
	}
	// Open the stream now: a missing table or a refused schema fails
	// Setup, before any message is read.
	if err := w.open(ctx); err != nil {
		releaseBigQuery(client)
		return nil, err
	}
	return w, nil
}

func (w *bigQueryTable) open(ctx context.Context) error {
	// The stream keeps its context for its connection's whole life; it
	// ends with close, not with the call that opened it.
	s, err := w.client.c.NewManagedStream(context.WithoutCancel(ctx),
		managedwriter.WithDestinationTable(w.table),
		managedwriter.WithType(managedwriter.DefaultStream),
		managedwriter.WithSchemaDescriptor(w.schema),
		// Transient failures are retried by the client; what still fails
		// fails the bundle, and the messages come again.
		managedwriter.EnableWriteRetries(true),
	)
	if err != nil {
		return fmt.Errorf("warehouse: open the default stream of BigQuery table %s: %w", w.table, err)
	}
	w.stream = s
	return nil
}

func (w *bigQueryTable) add(ctx context.Context, row []any) error {
	if len(row) != len(w.fields) {
		return fmt.Errorf("warehouse: row of %d values for BigQuery table %s, which has %d columns", len(row), w.table, len(w.fields))
	}
	m := dynamicpb.NewMessage(w.md)
	for i, v := range row {
		if err := setField(m, w.fields[i], v); err != nil {
			return fmt.Errorf("warehouse: row for BigQuery table %s: %w", w.table, err)
		}
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("warehouse: encode row for BigQuery table %s: %w", w.table, err)
	}
	if w.bytes+len(b) > maxAppendBytes {
		if err := w.send(ctx); err != nil {
			return err
		}
	}
	w.batch = append(w.batch, b)
	w.bytes += len(b)
	return nil
}

// send appends the batched rows; their result is waited for in commit.
func (w *bigQueryTable) send(ctx context.Context) error {
	if len(w.batch) == 0 {
		return nil
	}
	if w.bundleCtx == nil {
		w.bundleCtx, w.cancel = context.WithTimeout(context.WithoutCancel(ctx), bigQueryWriteTimeout)
	}
	if w.stream == nil {
		if err := w.open(w.bundleCtx); err != nil {
			return err
		}
	}
	res, err := w.stream.AppendRows(w.bundleCtx, w.batch)
	if err != nil {
		w.dropStream()
		return fmt.Errorf("warehouse: append %d rows to BigQuery table %s: %w", len(w.batch), w.table, err)
	}
	w.results = append(w.results, res)
	w.sent += len(w.batch)
	// The request owns the rows until it is done: start a new slice.
	w.batch, w.bytes = nil, 0
	return nil
}

func (w *bigQueryTable) commit(ctx context.Context) error {
	if err := w.send(ctx); err != nil {
		return err
	}
	defer w.endBundle()
	var errs []error
	for _, r := range w.results {
		if _, err := r.GetResult(w.bundleCtx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// The stream may be what failed; the next bundle gets a new one.
		w.dropStream()
		return fmt.Errorf("warehouse: %d of %d appends (%d rows) to BigQuery table %s failed: %w",
			len(errs), len(w.results), w.sent, w.table, errors.Join(errs...))
	}
	return nil
}

// abort forgets the bundle. Appends already sent may still land: the
// bundle's messages come again, and telemetry_dedup hides the copies.
func (w *bigQueryTable) abort() { w.endBundle() }

func (w *bigQueryTable) endBundle() {
	if w.cancel != nil {
		w.cancel()
	}
	w.bundleCtx, w.cancel = nil, nil
	w.batch, w.bytes, w.results, w.sent = nil, 0, nil, 0
}

func (w *bigQueryTable) dropStream() {
	if w.stream != nil {
		_ = w.stream.Close() // it failed already; that error is the one reported
		w.stream = nil
	}
}

func (w *bigQueryTable) close() error {
	w.endBundle()
	var err error
	if w.stream != nil {
		if cerr := w.stream.Close(); cerr != nil && !errors.Is(cerr, io.EOF) {
			err = fmt.Errorf("warehouse: close the stream of BigQuery table %s: %w", w.table, cerr)
		}
		w.stream = nil
	}
	if w.client != nil {
		err = errors.Join(err, releaseBigQuery(w.client))
		w.client = nil
	}
	return err
}

// setField sets fd of m to the row value v (see record for the kinds of
// value). A value that does not suit the field is an error, not a panic.
func setField(m protoreflect.Message, fd protoreflect.FieldDescriptor, v any) error {
	if v == nil {
		return nil
	}
	if fd.IsList() {
		recs, ok := v.([]record)
		if !ok || fd.Kind() != protoreflect.MessageKind {
			return fmt.Errorf("column %s: %T for a repeated %s field", fd.Name(), v, fd.Kind())
		}
		list := m.Mutable(fd).List()
		for _, r := range recs {
			sub := list.NewElement().Message()
			subFields := sub.Descriptor().Fields()
			for name, x := range r {
				sfd := subFields.ByName(protoreflect.Name(name))
				if sfd == nil {
					return fmt.Errorf("column %s has no field %q", fd.Name(), name)
				}
				if err := setField(sub, sfd, x); err != nil {
					return fmt.Errorf("column %s: %w", fd.Name(), err)
				}
			}
			list.Append(protoreflect.ValueOfMessage(sub))
		}
		return nil
	}
	var pv protoreflect.Value
	want := protoreflect.Kind(0)
	switch x := v.(type) {
	case string:
		pv, want = protoreflect.ValueOfString(x), protoreflect.StringKind
	case int64:
		pv, want = protoreflect.ValueOfInt64(x), protoreflect.Int64Kind
	case float64:
		pv, want = protoreflect.ValueOfFloat64(x), protoreflect.DoubleKind
	case bool:
		pv, want = protoreflect.ValueOfBool(x), protoreflect.BoolKind
	case []byte:
		pv, want = protoreflect.ValueOfBytes(x), protoreflect.BytesKind
	case time.Time:
		// TIMESTAMP travels as microseconds since the epoch.
		pv, want = protoreflect.ValueOfInt64(x.UnixMicro()), protoreflect.Int64Kind
	}
	if want == 0 || fd.Kind() != want {
		return fmt.Errorf("column %s: %T does not suit a %s field", fd.Name(), v, fd.Kind())
	}
	m.Set(fd, pv)
	return nil
}

// One managedwriter client per project and endpoint serves every sink
// instance of the process: a client holds a pool of connections, and a
// worker runs many bundle threads.
var (
	bigQueryMu      sync.Mutex
	bigQueryClients = map[bigQueryKey]*sharedBigQuery{}
)

type bigQueryKey struct{ project, emulator string }

type sharedBigQuery struct {
	key    bigQueryKey
	c      *managedwriter.Client
	cancel context.CancelFunc
	refs   int
}

// acquireBigQuery returns the shared client for project, made on first
// use. This is where BigQueryEmulatorHostEnv is read.
func acquireBigQuery(ctx context.Context, project, emulator string) (*sharedBigQuery, error) {
	if emulator == "" {
		emulator = os.Getenv(BigQueryEmulatorHostEnv)
	}
	key := bigQueryKey{project, emulator}
	bigQueryMu.Lock()
	defer bigQueryMu.Unlock()
	if s := bigQueryClients[key]; s != nil {
		s.refs++
		return s, nil
	}
	var opts []option.ClientOption
	if emulator != "" {
		opts = append(opts,
			option.WithEndpoint(emulator),
			option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		)
	}
	// The client keeps its context for its connections; it lives until
	// the last sink instance releases it, not as long as this Setup call.
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c, err := managedwriter.NewClient(cctx, project, opts...)
	if err != nil {
		cancel()
		where := "Google's endpoint"
		if emulator != "" {
			where = emulator
		}
		return nil, fmt.Errorf("warehouse: BigQuery Storage Write client for project %s at %s: %w", project, where, err)
	}
	s := &sharedBigQuery{key: key, c: c, cancel: cancel, refs: 1}
	bigQueryClients[key] = s
	return s, nil
}

func releaseBigQuery(s *sharedBigQuery) error {
	bigQueryMu.Lock()
	defer bigQueryMu.Unlock()
	s.refs--
	if s.refs > 0 {
		return nil
	}
	delete(bigQueryClients, s.key)
	err := s.c.Close()
	s.cancel()
	if err != nil {
		return fmt.Errorf("warehouse: close BigQuery client for project %s: %w", s.key.project, err)
	}
	return nil
}
