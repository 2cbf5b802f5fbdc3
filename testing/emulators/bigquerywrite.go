package emulators

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/iotpipe/iotpipe/schemas"
)

// BigQueryWriteServer is an in-memory BigQuery Storage Write API server: the
// `_default` stream of every table given to CreateTable, over the real gRPC
// protocol, so the real managedwriter client can be tested against it.
//
// It checks what a client sends the way BigQuery does: the writer schema (a
// proto descriptor) must fit the table's schema (every field a column, of a
// type BigQuery converts to the column's, repeated exactly when the column
// is, and no REQUIRED column left out), and every row must decode and carry
// its REQUIRED columns; otherwise the append fails with INVALID_ARGUMENT
// and stores nothing. Rows that pass are stored decoded, per table, for
// tests to read back with Rows.
//
// It serves GetWriteStream and AppendRows, all the client calls for default
// streams. Explicit streams (CreateWriteStream, FlushRows, Finalize, commit)
// answer UNIMPLEMENTED, and only the proto encodings of the column types the
// warehouse uses are decoded (see bigQueryKinds).
type BigQueryWriteServer struct {
	storagepb.UnimplementedBigQueryWriteServer

	// Addr is the host:port the server listens on.
	Addr string

	srv *grpc.Server

	mu     sync.Mutex
	tables map[string]*bigQueryTable

	faults faultBudget
}

// BigQueryTable is a table as the server knows it: what Terraform creates
// in the cloud from the schemas package's JSON and table options.
type BigQueryTable struct {
	// Name is projects/{project}/datasets/{dataset}/tables/{table}.
	Name string
	schemas.WarehouseTable
}

// BigQueryRow is one stored row.
type BigQueryRow struct {
	// Partition is the row's partition id, as in BigQuery's
	// INFORMATION_SCHEMA.PARTITIONS: "20231114" for a DAY-partitioned
	// table, "__NULL__" when the partitioning column is NULL, "" when the
	// table is not partitioned.
	Partition string
	// Values holds the row's non-NULL columns by name: string, int64,
	// float64, bool, []byte, time.Time (TIMESTAMP, UTC; DATE, midnight UTC),
	// map[string]any (RECORD), and for REPEATED columns a []any of those,
	// empty when the row has none.
	Values map[string]any
}

type bigQueryTable struct {
	BigQueryTable
	created time.Time
	rows    []BigQueryRow
}

// bigQueryID is what BigQuery accepts as a dataset id (and, more strictly
// than BigQuery, as a table id).
var bigQueryID = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// bigQueryLocation is the location the server reports for every stream;
// the client groups its connections by it.
const bigQueryLocation = "US"

// NewBigQueryWriteServer serves on l until Close. opts are passed to the
// gRPC server.
func NewBigQueryWriteServer(l net.Listener, opts ...grpc.ServerOption) *BigQueryWriteServer {
	s := &BigQueryWriteServer{
		Addr:   advertised(l.Addr()),
		srv:    grpc.NewServer(opts...),
		tables: map[string]*bigQueryTable{},
	}
	storagepb.RegisterBigQueryWriteServer(s.srv, s)
	go s.srv.Serve(l) // returns once Close stops the server
	return s
}

// Close stops the server and closes its listener.
func (s *BigQueryWriteServer) Close() { s.srv.Stop() }

// BigQueryTableName is the resource name of a table in the Storage Write
// API: projects/{project}/datasets/{dataset}/tables/{table}.
func BigQueryTableName(project, dataset, table string) string {
	return fmt.Sprintf("projects/%s/datasets/%s/tables/%s", project, dataset, table)
}

// CreateTable creates t in project and dataset. A table of that name that
// exists already is an error with code AlreadyExists, and is left as it is.
func (s *BigQueryWriteServer) CreateTable(project, dataset string, t schemas.WarehouseTable) error {
	name := BigQueryTableName(project, dataset, t.Name)
	if project == "" || len(dataset) > 1024 || !bigQueryID.MatchString(dataset) || !bigQueryID.MatchString(t.Name) || len(t.Fields) == 0 {
		return status.Errorf(codes.InvalidArgument, "bigquery emulator: create table %s: want a project, a dataset and table name of letters, digits and underscores, and fields", name)
	}
	if p := t.Partitioning; p != nil {
		f := findField(t.Fields, p.Field)
		if f == nil || (f.Type != "TIMESTAMP" && f.Type != "DATE") {
			return status.Errorf(codes.InvalidArgument, "bigquery emulator: create table %s: partitioning field %q is not a TIMESTAMP or DATE column", name, p.Field)
		}
	}
	for _, c := range t.Clustering {
		if findField(t.Fields, c) == nil {
			return status.Errorf(codes.InvalidArgument, "bigquery emulator: create table %s: clustering column %q is not a column", name, c)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tables[name]; ok {
		return status.Errorf(codes.AlreadyExists, "bigquery emulator: table %s already exists", name)
	}
	s.tables[name] = &bigQueryTable{BigQueryTable: BigQueryTable{Name: name, WarehouseTable: t}, created: time.Now()}
	return nil
}

// Table returns the table called name (see BigQueryTableName).
func (s *BigQueryWriteServer) Table(name string) (BigQueryTable, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tables[name]
	if !ok {
		return BigQueryTable{}, false
	}
	return t.BigQueryTable, true
}

// Rows returns the rows stored in table name, in the order appended.
func (s *BigQueryWriteServer) Rows(name string) ([]BigQueryRow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tables[name]
	if !ok {
		return nil, fmt.Errorf("bigquery emulator: no table %s", name)
	}
	return slices.Clone(t.rows), nil
}

// FailAppends makes the next n append requests fail with code, in the
// response as BigQuery reports a failed append, storing nothing. n < 0
// fails them until cleared; n == 0 clears.
func (s *BigQueryWriteServer) FailAppends(n int, code codes.Code) { s.faults.set(n, code) }

// AppendRequests is how many append requests have arrived, failed or not.
func (s *BigQueryWriteServer) AppendRequests() int64 { return s.faults.calls.Load() }

// AppendFailures is how many append requests FailAppends has failed.
func (s *BigQueryWriteServer) AppendFailures() int64 { return s.faults.failures.Load() }

// GetWriteStream describes the `_default` stream of an existing table.
func (s *BigQueryWriteServer) GetWriteStream(_ context.Context, req *storagepb.GetWriteStreamRequest) (*storagepb.WriteStream, error) {
	t, st := s.lookupStream(req.GetName())
	if st != nil {
		return nil, st.Err()
	}
	ws := &storagepb.WriteStream{
		Name:       req.GetName(),
		Type:       storagepb.WriteStream_COMMITTED, // what BigQuery reports for _default
		CreateTime: timestamppb.New(t.created),
		WriteMode:  storagepb.WriteStream_INSERT,
		Location:   bigQueryLocation,
	}
	if req.GetView() == storagepb.WriteStreamView_FULL {
		ws.TableSchema = &storagepb.TableSchema{Fields: storageFields(t.Fields)}
	}
	return ws, nil
}

// lookupStream finds the table of a `_default` stream name.
func (s *BigQueryWriteServer) lookupStream(name string) (*bigQueryTable, *status.Status) {
	table, id, ok := strings.Cut(name, "/streams/")
	if !ok || strings.Count(table, "/") != 5 || !strings.HasPrefix(table, "projects/") {
		return nil, status.Newf(codes.InvalidArgument, "bigquery emulator: stream name %q: want projects/P/datasets/D/tables/T/streams/_default", name)
	}
	s.mu.Lock()
	t := s.tables[table]
	s.mu.Unlock()
	if t == nil {
		return nil, storageError(codes.NotFound, storagepb.StorageError_TABLE_NOT_FOUND, table,
			"bigquery emulator: table %s not found", table)
	}
	if id != "_default" {
		return nil, storageError(codes.NotFound, storagepb.StorageError_STREAM_NOT_FOUND, name,
			"bigquery emulator: stream %s not found; only _default streams exist here", name)
	}
	return t, nil
}

// storageError is a status carrying BigQuery's StorageError detail, which
// the client's callers look for.
func storageError(code codes.Code, se storagepb.StorageError_StorageErrorCode, entity, format string, args ...any) *status.Status {
	st := status.Newf(code, format, args...)
	if d, err := st.WithDetails(&storagepb.StorageError{Code: se, Entity: entity, ErrorMessage: st.Message()}); err == nil {
		return d
	}
	return st
}

// appendConn is the state BigQuery keeps per AppendRows connection: the
// current stream, and the writer schema last sent for each stream.
type appendConn struct {
	stream string
	table  *bigQueryTable
	writer map[string]*writerSchema
}

// writerSchema is a checked writer schema: its message and, per column,
// the field holding it (nil when the writer leaves the column out).
type writerSchema struct {
	md     protoreflect.MessageDescriptor
	fields map[string]protoreflect.FieldDescriptor
}

// AppendRows serves one connection: a response per request, in order.
func (s *BigQueryWriteServer) AppendRows(stream storagepb.BigQueryWrite_AppendRowsServer) error {
	conn := &appendConn{writer: map[string]*writerSchema{}}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if req.GetWriteStream() == "" && conn.stream == "" {
			// BigQuery closes a connection whose first request names no stream.
			return status.Error(codes.InvalidArgument, "bigquery emulator: the first AppendRows request of a connection must set write_stream")
		}
		resp := s.append(conn, req)
		resp.WriteStream = conn.stream
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// append handles one request of conn.
func (s *BigQueryWriteServer) append(conn *appendConn, req *storagepb.AppendRowsRequest) *storagepb.AppendRowsResponse {
	if name := req.GetWriteStream(); name != "" && name != conn.stream {
		t, st := s.lookupStream(name)
		if st != nil {
			return errorResponse(st)
		}
		conn.stream, conn.table = name, t
	}
	rows := req.GetProtoRows()
	if rows == nil {
		return errorResponse(status.Newf(codes.InvalidArgument, "bigquery emulator: %s: only proto rows are accepted here", conn.stream))
	}
	// The writer schema belongs to the connection from the request that
	// carries it, whatever becomes of that request: the client resends a
	// failed request without it.
	if ps := rows.GetWriterSchema(); ps != nil {
		ws, st := checkWriterSchema(conn.table, ps.GetProtoDescriptor())
		if st != nil {
			delete(conn.writer, conn.stream)
			return errorResponse(st)
		}
		conn.writer[conn.stream] = ws
	}
	if code, fail := s.faults.take(); fail {
		return errorResponse(status.Newf(code, "bigquery emulator: injected append failure"))
	}
	if req.GetOffset() != nil {
		return errorResponse(status.Newf(codes.InvalidArgument, "bigquery emulator: %s: an offset cannot be set on a _default stream", conn.stream))
	}
	ws := conn.writer[conn.stream]
	if ws == nil {
		return errorResponse(status.Newf(codes.InvalidArgument, "bigquery emulator: %s: no writer_schema was sent for this stream on this connection", conn.stream))
	}
	decoded := make([]BigQueryRow, 0, len(rows.GetRows().GetSerializedRows()))
	var rowErrs []*storagepb.RowError
	for i, b := range rows.GetRows().GetSerializedRows() {
		row, err := decodeRow(conn.table, ws, b)
		if err != nil {
			rowErrs = append(rowErrs, &storagepb.RowError{Index: int64(i), Code: storagepb.RowError_FIELDS_ERROR, Message: err.Error()})
			continue
		}
		decoded = append(decoded, row)
	}
	if len(rowErrs) > 0 {
		// BigQuery refuses the whole request when any row is bad.
		resp := errorResponse(status.Newf(codes.InvalidArgument,
			"bigquery emulator: %s: %d of %d rows are invalid; nothing was appended; first: row %d: %s",
			conn.stream, len(rowErrs), len(decoded)+len(rowErrs), rowErrs[0].Index, rowErrs[0].Message))
		resp.RowErrors = rowErrs
		return resp
	}
	s.mu.Lock()
	conn.table.rows = append(conn.table.rows, decoded...)
	s.mu.Unlock()
	return &storagepb.AppendRowsResponse{Response: &storagepb.AppendRowsResponse_AppendResult_{
		AppendResult: &storagepb.AppendRowsResponse_AppendResult{}, // no offset on _default
	}}
}

func errorResponse(st *status.Status) *storagepb.AppendRowsResponse {
	return &storagepb.AppendRowsResponse{Response: &storagepb.AppendRowsResponse_Error{Error: st.Proto()}}
}

// checkWriterSchema builds the message dp describes and checks it against
// table t.
func checkWriterSchema(t *bigQueryTable, dp *descriptorpb.DescriptorProto) (*writerSchema, *status.Status) {
	if dp == nil {
		return nil, status.Newf(codes.InvalidArgument, "bigquery emulator: %s: writer_schema has no proto_descriptor", t.Name)
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:        proto.String("bigquery_emulator_writer_schema.proto"),
		Syntax:      proto.String("proto2"),
		MessageType: []*descriptorpb.DescriptorProto{dp},
	}
	// A descriptor may name well-known types instead of nesting them.
	seen := map[string]bool{}
	for _, ref := range typeRefs(dp) {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(strings.TrimPrefix(ref, ".")))
		if err == nil && !seen[d.ParentFile().Path()] {
			seen[d.ParentFile().Path()] = true
			fdp.Dependency = append(fdp.Dependency, d.ParentFile().Path())
		}
	}
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		return nil, status.Newf(codes.InvalidArgument, "bigquery emulator: %s: invalid proto schema: %v", t.Name, err)
	}
	md := fd.Messages().Get(0)
	fields, err := matchFields(md, t.Fields, "")
	if err != nil {
		var extra extraFieldError
		if errors.As(err, &extra) {
			return nil, storageError(codes.InvalidArgument, storagepb.StorageError_SCHEMA_MISMATCH_EXTRA_FIELDS, t.Name,
				"bigquery emulator: %s: %v", t.Name, err)
		}
		return nil, status.Newf(codes.InvalidArgument, "bigquery emulator: %s: proto schema does not match the table: %v", t.Name, err)
	}
	return &writerSchema{md: md, fields: fields}, nil
}

// typeRefs lists the fully qualified type names dp's fields use.
func typeRefs(dp *descriptorpb.DescriptorProto) []string {
	var refs []string
	for _, f := range dp.GetField() {
		if n := f.GetTypeName(); strings.HasPrefix(n, ".") {
			refs = append(refs, n)
		}
	}
	for _, n := range dp.GetNestedType() {
		refs = append(refs, typeRefs(n)...)
	}
	return refs
}

// extraFieldError is a writer field with no column: BigQuery's
// SCHEMA_MISMATCH_EXTRA_FIELDS.
type extraFieldError struct{ field string }

func (e extraFieldError) Error() string {
	return fmt.Sprintf("input schema has more fields than BigQuery schema, extra fields: '%s'", e.field)
}

// bigQueryKinds are the proto kinds this server decodes for each column
// type: a subset of BigQuery's conversions, the ones a writer built from the
// column types (adapt.StorageSchemaToProto2Descriptor) sends, plus a few
// lossless integer ones. Anything else is refused as a mismatch.
var bigQueryKinds = map[string][]protoreflect.Kind{
	"STRING":    {protoreflect.StringKind},
	"BYTES":     {protoreflect.BytesKind, protoreflect.StringKind},
	"INT64":     {protoreflect.Int64Kind, protoreflect.Int32Kind, protoreflect.Uint32Kind, protoreflect.Sint32Kind, protoreflect.Sint64Kind, protoreflect.Sfixed32Kind, protoreflect.Sfixed64Kind, protoreflect.Fixed32Kind},
	"FLOAT64":   {protoreflect.DoubleKind, protoreflect.FloatKind},
	"BOOL":      {protoreflect.BoolKind},
	"TIMESTAMP": {protoreflect.Int64Kind, protoreflect.MessageKind}, // microseconds, or google.protobuf.Timestamp
	"DATE":      {protoreflect.Int32Kind, protoreflect.Int64Kind},   // days since the epoch
	"RECORD":    {protoreflect.MessageKind},
}

// canonicalType folds BigQuery's type aliases.
func canonicalType(t string) string {
	switch t = strings.ToUpper(t); t {
	case "INTEGER":
		return "INT64"
	case "FLOAT":
		return "FLOAT64"
	case "BOOLEAN":
		return "BOOL"
	case "STRUCT":
		return "RECORD"
	}
	return t
}

// columnName is the column a writer field stands for: its name, or the
// column_name annotation BigQuery reads for names proto cannot spell.
func columnName(fd protoreflect.FieldDescriptor) string {
	if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts != nil && proto.HasExtension(opts, storagepb.E_ColumnName) {
		if n, _ := proto.GetExtension(opts, storagepb.E_ColumnName).(string); n != "" {
			return n
		}
	}
	return string(fd.Name())
}

func findField(fields []schemas.WarehouseField, name string) *schemas.WarehouseField {
	for i := range fields {
		// BigQuery column names are case-insensitive.
		if strings.EqualFold(fields[i].Name, name) {
			return &fields[i]
		}
	}
	return nil
}

// matchFields checks md against columns and maps each column to its field.
func matchFields(md protoreflect.MessageDescriptor, columns []schemas.WarehouseField, prefix string) (map[string]protoreflect.FieldDescriptor, error) {
	out := map[string]protoreflect.FieldDescriptor{}
	fds := md.Fields()
	for i := 0; i < fds.Len(); i++ {
		fd := fds.Get(i)
		name := columnName(fd)
		col := findField(columns, name)
		if col == nil {
			return nil, extraFieldError{prefix + name}
		}
		if _, dup := out[col.Name]; dup {
			return nil, fmt.Errorf("column %s%s has two fields", prefix, col.Name)
		}
		typ := canonicalType(col.Type)
		repeated := strings.EqualFold(col.Mode, "REPEATED")
		if fd.IsList() != repeated {
			return nil, fmt.Errorf("field %s%s is %s but column %s%s is %s", prefix, name, fd.Cardinality(), prefix, col.Name, modeOf(*col))
		}
		if fd.IsMap() {
			return nil, fmt.Errorf("field %s%s is a map, which no column type takes", prefix, name)
		}
		if !slices.Contains(bigQueryKinds[typ], fd.Kind()) {
			return nil, fmt.Errorf("field %s%s is a proto %s, which does not convert to column %s%s of type %s", prefix, name, fd.Kind(), prefix, col.Name, col.Type)
		}
		switch {
		case typ == "RECORD":
			if _, err := matchFields(fd.Message(), col.Fields, prefix+col.Name+"."); err != nil {
				return nil, err
			}
		case fd.Kind() == protoreflect.MessageKind && !isTimestampMessage(fd.Message()):
			return nil, fmt.Errorf("field %s%s is a message %s, which does not convert to column %s%s of type %s", prefix, name, fd.Message().FullName(), prefix, col.Name, col.Type)
		}
		out[col.Name] = fd
	}
	for _, col := range columns {
		if strings.EqualFold(col.Mode, "REQUIRED") && out[col.Name] == nil {
			return nil, fmt.Errorf("REQUIRED column %s%s has no field in the proto schema", prefix, col.Name)
		}
	}
	return out, nil
}

// isTimestampMessage tells google.protobuf.Timestamp by its shape, since a
// normalized descriptor carries it nested under another name.
func isTimestampMessage(md protoreflect.MessageDescriptor) bool {
	f := md.Fields()
	sec, nanos := f.ByName("seconds"), f.ByName("nanos")
	return f.Len() == 2 && sec != nil && nanos != nil && sec.Kind() == protoreflect.Int64Kind && nanos.Kind() == protoreflect.Int32Kind
}

func modeOf(f schemas.WarehouseField) string {
	if f.Mode == "" {
		return "NULLABLE"
	}
	return strings.ToUpper(f.Mode)
}

// decodeRow decodes one serialized row with the writer schema and converts
// it to the table's column types.
func decodeRow(t *bigQueryTable, ws *writerSchema, b []byte) (BigQueryRow, error) {
	m := dynamicpb.NewMessage(ws.md)
	// Required fields are checked below, per column, as BigQuery does.
	if err := (proto.UnmarshalOptions{AllowPartial: true}).Unmarshal(b, m); err != nil {
		return BigQueryRow{}, fmt.Errorf("cannot decode the row with the writer schema: %w", err)
	}
	values, err := columnValues(m, t.Fields, "")
	if err != nil {
		return BigQueryRow{}, err
	}
	row := BigQueryRow{Values: values}
	if p := t.Partitioning; p != nil {
		row.Partition = partitionID(p.Type, values[p.Field])
	}
	return row, nil
}

// columnValues converts the fields of m to values of columns (see BigQueryRow).
func columnValues(m protoreflect.Message, columns []schemas.WarehouseField, prefix string) (map[string]any, error) {
	fds := m.Descriptor().Fields()
	byColumn := map[string]protoreflect.FieldDescriptor{}
	for i := 0; i < fds.Len(); i++ {
		fd := fds.Get(i)
		if col := findField(columns, columnName(fd)); col != nil {
			byColumn[col.Name] = fd
		}
	}
	values := map[string]any{}
	for _, col := range columns {
		fd := byColumn[col.Name]
		typ := canonicalType(col.Type)
		if strings.EqualFold(col.Mode, "REPEATED") {
			list := []any{}
			if fd != nil {
				l := m.Get(fd).List()
				for i := 0; i < l.Len(); i++ {
					v, err := columnValue(typ, col, l.Get(i), fd, prefix)
					if err != nil {
						return nil, err
					}
					list = append(list, v)
				}
			}
			values[col.Name] = list
			continue
		}
		if fd == nil || !m.Has(fd) {
			if strings.EqualFold(col.Mode, "REQUIRED") {
				return nil, fmt.Errorf("REQUIRED column %s%s has no value", prefix, col.Name)
			}
			continue
		}
		v, err := columnValue(typ, col, m.Get(fd), fd, prefix)
		if err != nil {
			return nil, err
		}
		values[col.Name] = v
	}
	return values, nil
}

func columnValue(typ string, col schemas.WarehouseField, v protoreflect.Value, fd protoreflect.FieldDescriptor, prefix string) (any, error) {
	switch typ {
	case "STRING":
		return v.String(), nil
	case "BYTES":
		if fd.Kind() == protoreflect.StringKind {
			return []byte(v.String()), nil
		}
		return v.Bytes(), nil
	case "INT64":
		if k := fd.Kind(); k == protoreflect.Uint32Kind || k == protoreflect.Fixed32Kind {
			return int64(v.Uint()), nil
		}
		return v.Int(), nil
	case "FLOAT64":
		return v.Float(), nil
	case "BOOL":
		return v.Bool(), nil
	case "TIMESTAMP":
		if fd.Kind() == protoreflect.MessageKind {
			m := v.Message()
			f := m.Descriptor().Fields()
			return time.Unix(m.Get(f.ByName("seconds")).Int(), m.Get(f.ByName("nanos")).Int()).UTC(), nil
		}
		return time.UnixMicro(v.Int()).UTC(), nil
	case "DATE":
		return time.Unix(v.Int()*86400, 0).UTC(), nil
	case "RECORD":
		return columnValues(v.Message(), col.Fields, prefix+col.Name+".")
	}
	return nil, fmt.Errorf("column %s%s has type %s, which this server does not decode", prefix, col.Name, col.Type)
}

// partitionID is BigQuery's partition id of a partitioning column value.
func partitionID(granularity string, v any) string {
	t, ok := v.(time.Time)
	if !ok {
		return "__NULL__"
	}
	switch granularity {
	case "HOUR":
		return t.Format("2006010215")
	case "MONTH":
		return t.Format("200601")
	case "YEAR":
		return t.Format("2006")
	}
	return t.Format("20060102")
}

// storageFields renders columns as the Storage API's table schema.
func storageFields(columns []schemas.WarehouseField) []*storagepb.TableFieldSchema {
	types := map[string]storagepb.TableFieldSchema_Type{
		"STRING": storagepb.TableFieldSchema_STRING, "BYTES": storagepb.TableFieldSchema_BYTES,
		"INT64": storagepb.TableFieldSchema_INT64, "FLOAT64": storagepb.TableFieldSchema_DOUBLE,
		"BOOL": storagepb.TableFieldSchema_BOOL, "TIMESTAMP": storagepb.TableFieldSchema_TIMESTAMP,
		"DATE": storagepb.TableFieldSchema_DATE, "RECORD": storagepb.TableFieldSchema_STRUCT,
		"NUMERIC": storagepb.TableFieldSchema_NUMERIC,
	}
	modes := map[string]storagepb.TableFieldSchema_Mode{
		"NULLABLE": storagepb.TableFieldSchema_NULLABLE, "REQUIRED": storagepb.TableFieldSchema_REQUIRED,
		"REPEATED": storagepb.TableFieldSchema_REPEATED,
	}
	out := make([]*storagepb.TableFieldSchema, len(columns))
	for i, c := range columns {
		out[i] = &storagepb.TableFieldSchema{
			Name:        c.Name,
			Type:        types[canonicalType(c.Type)],
			Mode:        modes[modeOf(c)],
			Description: c.Description,
			Fields:      storageFields(c.Fields),
		}
	}
	return out
}
