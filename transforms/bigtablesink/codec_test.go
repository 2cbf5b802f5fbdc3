package bigtablesink

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	btpb "cloud.google.com/go/bigtable/apiv2/bigtablepb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
)

func TestSchemaKnown(t *testing.T) {
	if !schemaKnown {
		t.Fatal("the Bigtable client's MutateRows messages have fields the encoder does not write: teach appendMutateRows them")
	}
	if _, ok := encoding.GetCodecV2("proto").(codec); !ok {
		t.Fatalf("gRPC's proto codec is %T, want the sink's", encoding.GetCodecV2("proto"))
	}
}

// request is a MutateRowsRequest of rows rows of cells cells each, with
// field values drawn from r, zero values included.
func request(r *rand.Rand, rows, cells int) *btpb.MutateRowsRequest {
	pick := func(vals ...string) string { return vals[r.IntN(len(vals))] }
	req := &btpb.MutateRowsRequest{
		TableName:    pick("", "projects/p/instances/i/tables/telemetry"),
		AppProfileId: pick("", "default"),
	}
	if req.TableName == "" {
		req.AuthorizedViewName = pick("", "projects/p/instances/i/tables/t/authorizedViews/v")
	}
	for i := range rows {
		e := &btpb.MutateRowsRequest_Entry{RowKey: []byte(pick("", fmt.Sprintf("device-%d#%013d#%d", i, r.Int64N(1e13), r.IntN(1e6))))}
		for range cells {
			e.Mutations = append(e.Mutations, &btpb.Mutation{Mutation: &btpb.Mutation_SetCell_{SetCell: &btpb.Mutation_SetCell{
				FamilyName:      pick("", "m", "e"),
				ColumnQualifier: []byte(pick("", "temp_c", "message_id", string(make([]byte, 200)))),
				TimestampMicros: []int64{0, -1, 1700000000123000, r.Int64()}[r.IntN(4)],
				Value:           []byte(pick("", "21.5", string(make([]byte, 300)))),
			}}})
		}
		req.Entries = append(req.Entries, e)
	}
	return req
}

func marshal(t testing.TB, c encoding.CodecV2, m proto.Message) []byte {
	t.Helper()
	data, err := c.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Free()
	return data.Materialize()
}

// TestCodecMatchesProto: the codec writes exactly the bytes of the
// protobuf runtime, for the requests it encodes itself and for those it
// hands to gRPC's proto codec, and they decode back to the request.
func TestCodecMatchesProto(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	c := newCodec()
	other := func(req *btpb.MutateRowsRequest) *btpb.MutateRowsRequest {
		if len(req.Entries) > 0 {
			e := req.Entries[r.IntN(len(req.Entries))]
			switch r.IntN(3) {
			case 0:
				e.Mutations = append(e.Mutations, &btpb.Mutation{Mutation: &btpb.Mutation_DeleteFromRow_{DeleteFromRow: &btpb.Mutation_DeleteFromRow{}}})
			case 1:
				e.Idempotency = &btpb.Idempotency{Token: []byte("t")}
			case 2:
				e.ProtoReflect().SetUnknown([]byte{0x38, 0x01}) // field 7, varint 1
			}
		}
		return req
	}
	for i := range 2000 {
		req := request(r, r.IntN(5), r.IntN(4))
		own := true
		if i%4 == 3 && len(req.Entries) > 0 {
			req, own = other(req), false
		}
		if got := encodesMutateRows(req); got != own {
			t.Fatalf("request %d: encodesMutateRows = %v, want %v", i, got, own)
		}
		want, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		got := marshal(t, c, req)
		if !bytes.Equal(got, want) {
			t.Fatalf("request %d (encoded by the sink's encoder: %v):\n got %x\nwant %x", i, own, got, want)
		}
		if own && len(got) != sizeMutateRows(req) {
			t.Fatalf("request %d: sizeMutateRows = %d, encoding has %d bytes", i, sizeMutateRows(req), len(got))
		}
		back := &btpb.MutateRowsRequest{}
		if err := proto.Unmarshal(got, back); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if !proto.Equal(back, req) {
			t.Fatalf("request %d decodes to\n%v\nwant\n%v", i, back, req)
		}
	}
	// Other messages pass through.
	resp := &btpb.MutateRowsResponse{Entries: []*btpb.MutateRowsResponse_Entry{{Index: 3}}}
	want, _ := proto.Marshal(resp)
	if got := marshal(t, c, resp); !bytes.Equal(got, want) {
		t.Fatalf("MutateRowsResponse: got %x, want %x", got, want)
	}
}

// BenchmarkMutateRowsEncode encodes a call of the telemetry sink's shape
// (1,000 rows of 8 cells) with gRPC's proto codec and with the sink's.
func BenchmarkMutateRowsEncode(b *testing.B) {
	req := &btpb.MutateRowsRequest{TableName: "projects/p/instances/i/tables/telemetry"}
	for i := range maxRowsPerCall {
		e := &btpb.MutateRowsRequest_Entry{RowKey: fmt.Appendf(nil, "device-%04d#%013d#%d", i%1000, 1700000000000+int64(i)*1000, i)}
		for _, col := range []string{"humidity", "temp_c", "voltage", "registry", "location", "subfolder", "message_id", "publish_ms"} {
			e.Mutations = append(e.Mutations, &btpb.Mutation{Mutation: &btpb.Mutation_SetCell_{SetCell: &btpb.Mutation_SetCell{
				FamilyName: "m", ColumnQualifier: []byte(col), TimestampMicros: 1700000000000000 + int64(i)*1000000, Value: []byte("21.5"),
			}}})
		}
		req.Entries = append(req.Entries, e)
	}
	for _, c := range []encoding.CodecV2{grpcProto, newCodec()} {
		name := "grpc-proto"
		if _, ok := c.(codec); ok {
			name = "sink"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := c.Marshal(req)
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(req.Entries)*8), "ns/cell")
		})
	}
}
