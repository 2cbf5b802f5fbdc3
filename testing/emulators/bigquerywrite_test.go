package emulators

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"cloud.google.com/go/bigquery/storage/managedwriter/adapt"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/iotpipe/iotpipe/schemas"
)

const testDataset = "iotpipe"

// startBigQuery runs the emulators with the warehouse tables provisioned,
// twice to show provisioning is idempotent.
func startBigQuery(t *testing.T) *Emulators {
	t.Helper()
	e := start(t, Config{})
	for i := range 2 {
		if err := e.Provision(t.Context(), Resources{Project: testProject, BigQueryDataset: testDataset}); err != nil {
			t.Fatalf("Provision #%d: %v", i+1, err)
		}
	}
	return e
}

// newWriteClient is the real managedwriter client pointed at the fake.
func newWriteClient(t *testing.T, e *Emulators, opts ...option.ClientOption) *managedwriter.Client {
	t.Helper()
	opts = append(opts,
		option.WithEndpoint(e.BigQueryWriteAddr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	)
	c, err := managedwriter.NewClient(t.Context(), testProject, opts...)
	if err != nil {
		t.Fatalf("managedwriter.NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// tableDescriptor derives a table's row message from its JSON schema with
// the client library's conversions, as a writer would.
func tableDescriptor(t *testing.T, table string) protoreflect.MessageDescriptor {
	t.Helper()
	b, err := schemas.WarehouseSchemaJSON(table)
	if err != nil {
		t.Fatal(err)
	}
	schema, err := bigquery.SchemaFromJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := adapt.BQSchemaToStorageTableSchema(schema)
	if err != nil {
		t.Fatal(err)
	}
	d, err := adapt.StorageSchemaToProto2Descriptor(ts, "root")
	if err != nil {
		t.Fatal(err)
	}
	return d.(protoreflect.MessageDescriptor)
}

func normalized(t *testing.T, md protoreflect.MessageDescriptor) *descriptorpb.DescriptorProto {
	t.Helper()
	dp, err := adapt.NormalizeDescriptor(md)
	if err != nil {
		t.Fatal(err)
	}
	return dp
}

// rowBytes encodes a row given as column -> value (int64 micros for TIMESTAMP).
func rowBytes(t *testing.T, md protoreflect.MessageDescriptor, values map[string]any) []byte {
	t.Helper()
	m := dynamicpb.NewMessage(md)
	for k, v := range values {
		fd := md.Fields().ByName(protoreflect.Name(k))
		if fd == nil {
			t.Fatalf("no field %q in %s", k, md.FullName())
		}
		if recs, ok := v.([]map[string]any); ok {
			l := m.Mutable(fd).List()
			for _, r := range recs {
				sub := l.NewElement().Message()
				for sk, sv := range r {
					sub.Set(sub.Descriptor().Fields().ByName(protoreflect.Name(sk)), protoreflect.ValueOf(sv))
				}
				l.Append(protoreflect.ValueOfMessage(sub))
			}
			continue
		}
		m.Set(fd, protoreflect.ValueOf(v))
	}
	b, err := proto.MarshalOptions{AllowPartial: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func appendRows(ctx context.Context, c *managedwriter.Client, table string, dp *descriptorpb.DescriptorProto, rows [][]byte) (*storagepb.AppendRowsResponse, error) {
	ms, err := c.NewManagedStream(ctx,
		managedwriter.WithDestinationTable(table),
		managedwriter.WithType(managedwriter.DefaultStream),
		managedwriter.WithSchemaDescriptor(dp))
	if err != nil {
		return nil, err
	}
	defer ms.Close()
	res, err := ms.AppendRows(ctx, rows)
	if err != nil {
		return nil, err
	}
	return res.FullResponse(ctx)
}

var telemetryName = BigQueryTableName(testProject, testDataset, schemas.TelemetryTable)

func telemetryRow(device string, seq int64, ts time.Time) map[string]any {
	return map[string]any{
		"device_id": device, "seq": seq, "ts": ts.UnixMicro(), "metric": "temp", "value": 21.5,
		"ingest_time": ts.Add(time.Second).UnixMicro(), "buffered": false, "registry": "reg",
	}
}

// TestBigQueryProvision checks that provisioning creates every warehouse
// table with its schema and the options Terraform sets on it.
func TestBigQueryProvision(t *testing.T) {
	e := startBigQuery(t)
	tables, err := schemas.WarehouseTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range tables {
		got, ok := e.BigQueryWrite.Table(BigQueryTableName(testProject, testDataset, want.Name))
		if !ok {
			t.Errorf("table %s not provisioned", want.Name)
			continue
		}
		if !slices.EqualFunc(got.Fields, want.Fields, func(a, b schemas.WarehouseField) bool {
			return a.Name == b.Name && a.Type == b.Type && a.Mode == b.Mode
		}) {
			t.Errorf("%s fields = %+v; want %+v", want.Name, got.Fields, want.Fields)
		}
	}
	tel, _ := e.BigQueryWrite.Table(telemetryName)
	if p := tel.Partitioning; p == nil || p.Type != "DAY" || p.Field != "ts" {
		t.Errorf("telemetry partitioning = %+v; want DAY on ts", p)
	}
	if len(tel.Clustering) == 0 || tel.Clustering[0] != "device_id" {
		t.Errorf("telemetry clustering = %v; want device_id first", tel.Clustering)
	}
	if err := e.Provision(t.Context(), Resources{Project: testProject, BigQueryDataset: "bad-name"}); err == nil {
		t.Error("Provision with an invalid dataset succeeded")
	}
}

// TestBigQueryWriteDefaultStream writes through the real client and reads
// the rows back, decoded and in their day partitions.
func TestBigQueryWriteDefaultStream(t *testing.T) {
	e := startBigQuery(t)
	c := newWriteClient(t, e)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	ws, err := c.GetWriteStream(ctx, &storagepb.GetWriteStreamRequest{Name: telemetryName + "/streams/_default", View: storagepb.WriteStreamView_FULL})
	if err != nil {
		t.Fatalf("GetWriteStream: %v", err)
	}
	if ws.GetType() != storagepb.WriteStream_COMMITTED || len(ws.GetTableSchema().GetFields()) == 0 {
		t.Errorf("GetWriteStream = type %v, %d schema fields; want COMMITTED with the table schema", ws.GetType(), len(ws.GetTableSchema().GetFields()))
	}

	md := tableDescriptor(t, schemas.TelemetryTable)
	ts := time.UnixMilli(1700000000000).UTC() // 2023-11-14T22:13:20Z
	rows := [][]byte{
		rowBytes(t, md, telemetryRow("d1", 1, ts)),
		rowBytes(t, md, telemetryRow("d1", 2, ts.Add(2*time.Hour))), // the next day
	}
	resp, err := appendRows(ctx, c, telemetryName, normalized(t, md), rows)
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if resp.GetAppendResult() == nil {
		t.Fatalf("response = %v; want an append result", resp)
	}
	got, err := e.BigQueryWrite.Rows(telemetryName)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("rows = %+v; want 2", got)
	}
	if got[0].Partition != "20231114" || got[1].Partition != "20231115" {
		t.Errorf("partitions = %s, %s; want 20231114, 20231115", got[0].Partition, got[1].Partition)
	}
	v := got[0].Values
	if v["device_id"] != "d1" || v["seq"] != int64(1) || v["value"] != 21.5 || v["buffered"] != false || !ts.Equal(v["ts"].(time.Time)) {
		t.Errorf("row 0 = %v", v)
	}
	if _, ok := v["schema_id"]; ok {
		t.Errorf("row 0 has schema_id %v; want it NULL (absent)", v["schema_id"])
	}

	// A repeated record, and its absence: an empty list, never NULL.
	dl := tableDescriptor(t, schemas.DeadLetterTable)
	dlName := BigQueryTableName(testProject, testDataset, schemas.DeadLetterTable)
	_, err = appendRows(ctx, c, dlName, normalized(t, dl), [][]byte{
		rowBytes(t, dl, map[string]any{"timestamp": ts.UnixMicro(), "stage": "parse",
			"attributes": []map[string]any{{"key": "deviceId", "value": "d1"}}}),
		rowBytes(t, dl, map[string]any{"timestamp": ts.UnixMicro(), "stage": "validate"}),
	})
	if err != nil {
		t.Fatalf("append dead letters: %v", err)
	}
	dlRows, _ := e.BigQueryWrite.Rows(dlName)
	if len(dlRows) != 2 {
		t.Fatalf("dead letter rows = %+v", dlRows)
	}
	attrs := dlRows[0].Values["attributes"].([]any)
	if len(attrs) != 1 || attrs[0].(map[string]any)["key"] != "deviceId" {
		t.Errorf("attributes = %v; want [{key: deviceId, value: d1}]", attrs)
	}
	if a := dlRows[1].Values["attributes"].([]any); len(a) != 0 {
		t.Errorf("attributes of a row without = %v; want []", a)
	}
}

// TestBigQueryWriteRejects sends what BigQuery refuses and expects the
// client to see INVALID_ARGUMENT (or NOT_FOUND) and nothing stored.
func TestBigQueryWriteRejects(t *testing.T) {
	e := startBigQuery(t)
	c := newWriteClient(t, e)
	md := tableDescriptor(t, schemas.TelemetryTable)
	good := rowBytes(t, md, telemetryRow("d1", 1, time.UnixMilli(1700000000000)))
	field := func(dp *descriptorpb.DescriptorProto, name string) *descriptorpb.FieldDescriptorProto {
		for _, f := range dp.Field {
			if f.GetName() == name {
				return f
			}
		}
		t.Fatalf("no field %s", name)
		return nil
	}
	tests := []struct {
		name   string
		table  string
		mutate func(dp *descriptorpb.DescriptorProto)
		rows   func(dp *descriptorpb.DescriptorProto) [][]byte
		code   codes.Code
		want   string // substring of the error
	}{
		{
			name: "missing REQUIRED column",
			mutate: func(dp *descriptorpb.DescriptorProto) {
				dp.Field = slices.DeleteFunc(dp.Field, func(f *descriptorpb.FieldDescriptorProto) bool { return f.GetName() == "seq" })
			},
			code: codes.InvalidArgument, want: "REQUIRED column seq has no field",
		},
		{
			name: "wrong type",
			mutate: func(dp *descriptorpb.DescriptorProto) {
				field(dp, "seq").Type = descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
			},
			code: codes.InvalidArgument, want: "field seq is a proto string, which does not convert to column seq of type INT64",
		},
		{
			name: "TIMESTAMP as double",
			mutate: func(dp *descriptorpb.DescriptorProto) {
				field(dp, "ts").Type = descriptorpb.FieldDescriptorProto_TYPE_DOUBLE.Enum()
			},
			code: codes.InvalidArgument, want: "column ts of type TIMESTAMP",
		},
		{
			name: "extra field",
			mutate: func(dp *descriptorpb.DescriptorProto) {
				dp.Field = append(dp.Field, &descriptorpb.FieldDescriptorProto{Name: proto.String("humidity"), Number: proto.Int32(99),
					Type: descriptorpb.FieldDescriptorProto_TYPE_DOUBLE.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()})
			},
			code: codes.InvalidArgument, want: "extra fields: 'humidity'",
		},
		{
			name: "repeated for a scalar column",
			mutate: func(dp *descriptorpb.DescriptorProto) {
				field(dp, "metric").Label = descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
			},
			code: codes.InvalidArgument, want: "column metric is REQUIRED",
		},
		{
			name:  "record field of the wrong type",
			table: schemas.DeadLetterTable,
			mutate: func(dp *descriptorpb.DescriptorProto) {
				for _, n := range dp.NestedType {
					for _, f := range n.Field {
						if f.GetName() == "value" {
							f.Type = descriptorpb.FieldDescriptorProto_TYPE_INT64.Enum()
						}
					}
				}
			},
			code: codes.InvalidArgument, want: "column attributes.value of type STRING",
		},
		{
			name: "row without a REQUIRED value",
			// BigQuery takes an optional field for a REQUIRED column and
			// checks each row instead.
			mutate: func(dp *descriptorpb.DescriptorProto) {
				field(dp, "device_id").Label = descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
			},
			rows: func(dp *descriptorpb.DescriptorProto) [][]byte {
				r := telemetryRow("", 1, time.UnixMilli(1700000000000))
				delete(r, "device_id")
				return [][]byte{good, rowBytes(t, mdOf(t, dp), r)}
			},
			code: codes.InvalidArgument, want: "REQUIRED column device_id has no value",
		},
		{
			name:  "unknown table",
			table: "nope",
			code:  codes.NotFound, want: "not found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			table := tt.table
			if table == "" {
				table = schemas.TelemetryTable
			}
			var dp *descriptorpb.DescriptorProto
			if table == "nope" {
				dp = normalized(t, md)
			} else {
				dp = normalized(t, tableDescriptor(t, table))
			}
			if tt.mutate != nil {
				tt.mutate(dp)
			}
			rows := [][]byte{good}
			if tt.rows != nil {
				rows = tt.rows(dp)
			}
			name := BigQueryTableName(testProject, testDataset, table)
			resp, err := appendRows(ctx, c, name, dp, rows)
			if err == nil {
				t.Fatalf("append succeeded: %v", resp)
			}
			if got := status.Code(err); got != tt.code || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v (%v); want %v containing %q", err, got, tt.code, tt.want)
			}
			if rowErrs := resp.GetRowErrors(); tt.rows != nil && (len(rowErrs) != 1 || rowErrs[0].GetIndex() != 1) {
				t.Errorf("row errors = %v; want one, for row 1", rowErrs)
			}
			if stored, err := e.BigQueryWrite.Rows(name); err == nil && len(stored) != 0 {
				t.Errorf("%d rows stored after a refused append", len(stored))
			}
		})
	}
}

// mdOf builds the message a (mutated) normalized descriptor describes.
func mdOf(t *testing.T, dp *descriptorpb.DescriptorProto) protoreflect.MessageDescriptor {
	t.Helper()
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name: proto.String("test.proto"), Syntax: proto.String("proto2"), MessageType: []*descriptorpb.DescriptorProto{dp},
	}, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	return fd.Messages().Get(0)
}

// TestBigQueryAppendFaults fails appends on demand: a transient failure is
// retried by the client, a lasting one reaches the caller, and neither
// stores anything twice.
func TestBigQueryAppendFaults(t *testing.T) {
	e := startBigQuery(t)
	c := newWriteClient(t, e)
	md := tableDescriptor(t, schemas.TelemetryTable)
	tests := []struct {
		name      string
		arm       int
		code      codes.Code
		retries   bool
		wantErr   codes.Code
		wantRows  int
		wantFails int64
	}{
		{"transient, retried", 1, codes.Unavailable, true, codes.OK, 1, 1},
		{"lasting", -1, codes.Unavailable, true, codes.Unavailable, 0, 4},
		{"not retryable", 1, codes.InvalidArgument, true, codes.InvalidArgument, 0, 1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Cleanup(func() { e.BigQueryWrite.FailAppends(0, codes.OK) })
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			before, _ := e.BigQueryWrite.Rows(telemetryName)
			fails0 := e.BigQueryWrite.AppendFailures()
			e.BigQueryWrite.FailAppends(tt.arm, tt.code)
			ms, err := c.NewManagedStream(ctx, managedwriter.WithDestinationTable(telemetryName),
				managedwriter.WithType(managedwriter.DefaultStream),
				managedwriter.WithSchemaDescriptor(normalized(t, md)),
				managedwriter.EnableWriteRetries(tt.retries))
			if err != nil {
				t.Fatal(err)
			}
			defer ms.Close()
			res, err := ms.AppendRows(ctx, [][]byte{rowBytes(t, md, telemetryRow("f", int64(i), time.UnixMilli(1700000000000)))})
			if err == nil {
				_, err = res.GetResult(ctx)
			}
			if got := status.Code(err); got != tt.wantErr {
				t.Errorf("append error = %v; want code %v", err, tt.wantErr)
			}
			after, _ := e.BigQueryWrite.Rows(telemetryName)
			if got := len(after) - len(before); got != tt.wantRows {
				t.Errorf("rows added = %d; want %d", got, tt.wantRows)
			}
			if got := e.BigQueryWrite.AppendFailures() - fails0; got != tt.wantFails {
				t.Errorf("injected failures = %d; want %d", got, tt.wantFails)
			}
		})
	}
}

// TestBigQueryMultiplexed writes two tables over one shared connection,
// where the client names the stream (and schema) when it changes.
func TestBigQueryMultiplexed(t *testing.T) {
	e := startBigQuery(t)
	c := newWriteClient(t, e, managedwriter.WithMultiplexing())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tel := tableDescriptor(t, schemas.TelemetryTable)
	ref := tableDescriptor(t, schemas.ReferenceTable)
	refName := BigQueryTableName(testProject, testDataset, schemas.ReferenceTable)
	open := func(table string, md protoreflect.MessageDescriptor) *managedwriter.ManagedStream {
		ms, err := c.NewManagedStream(ctx, managedwriter.WithDestinationTable(table),
			managedwriter.WithType(managedwriter.DefaultStream), managedwriter.WithSchemaDescriptor(normalized(t, md)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ms.Close() })
		return ms
	}
	msTel, msRef := open(telemetryName, tel), open(refName, ref)
	now := time.UnixMilli(1700000000000)
	var results []*managedwriter.AppendResult
	for i := range 3 {
		r1, err := msTel.AppendRows(ctx, [][]byte{rowBytes(t, tel, telemetryRow("m", int64(i), now))})
		if err != nil {
			t.Fatal(err)
		}
		r2, err := msRef.AppendRows(ctx, [][]byte{rowBytes(t, ref, map[string]any{"device_id": "m", "load_time": now.UnixMicro()})})
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, r1, r2)
	}
	for _, r := range results {
		if _, err := r.GetResult(ctx); err != nil {
			t.Fatalf("append: %v", err)
		}
	}
	for _, name := range []string{telemetryName, refName} {
		if rows, _ := e.BigQueryWrite.Rows(name); len(rows) != 3 {
			t.Errorf("%s has %d rows; want 3", name, len(rows))
		}
	}
}

func TestBigQueryPortTakenAndReleased(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := taken.Addr().(*net.TCPAddr).Port
	e, err := Start(Config{BigQueryPort: port})
	if err == nil {
		e.Close()
		t.Fatalf("Start with bigquery port %d taken succeeded", port)
	}
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "-bigquery_port") {
		t.Errorf("error %q; want EADDRINUSE naming -bigquery_port", err)
	}
	taken.Close()

	e, err = Start(Config{BigQueryPort: port})
	if err != nil {
		t.Fatalf("Start on the freed port: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", e.BigQueryWriteAddr)
	if err != nil {
		t.Fatalf("port still held after Close: %v", err)
	}
	l.Close()
}
