package bigtablesink

import (
	"slices"

	btpb "cloud.google.com/go/bigtable/apiv2/bigtablepb"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registered before this package's codec wraps it
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// codec is gRPC's proto codec with its own encoder for the request the
// sink sends in bulk: a MutateRowsRequest whose mutations are all SetCell.
// Encoding that request through the generic protobuf runtime (a size pass,
// then a marshal pass, each walking the oneofs by reflection) cost the
// sink more CPU than building its rows; this encoder writes the same bytes
// in one size pass and one append pass over concrete types. Every other
// message, and any request with a field the encoder does not know of, goes
// to gRPC's own proto codec.
//
// It is registered in place of that codec, for the whole process: the
// Bigtable client takes no codec of its own (with the emulator, or any
// connection it is handed, it ignores call options given at dial time),
// and gRPC looks its codec up by name. For every message but that request
// the registered codec is gRPC's.
type codec struct{ proto encoding.CodecV2 }

// grpcProto is gRPC's proto codec.
var grpcProto = encoding.GetCodecV2("proto")

func init() { encoding.RegisterCodecV2(newCodec()) }

func newCodec() codec { return codec{proto: grpcProto} }

// Name is the proto codec's name, so the content type on the wire is
// unchanged.
func (codec) Name() string { return "proto" }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if req, ok := v.(*btpb.MutateRowsRequest); ok && encodesMutateRows(req) {
		size := sizeMutateRows(req)
		if mem.IsBelowBufferPoolingThreshold(size) {
			return mem.BufferSlice{mem.SliceBuffer(appendMutateRows(make([]byte, 0, size), req))}, nil
		}
		pool := mem.DefaultBufferPool()
		buf := pool.Get(size)
		*buf = appendMutateRows((*buf)[:0], req)
		return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// The field numbers the encoder knows.
const (
	reqTableName          = 1
	reqEntries            = 2
	reqAppProfileID       = 3
	reqAuthorizedViewName = 5
	entryRowKey           = 1
	entryMutations        = 2
	entryIdempotency      = 3 // not written: a request with one goes to gRPC's codec
	mutationSetCell       = 1
	setCellFamily         = 1
	setCellColumn         = 2
	setCellTimestamp      = 3
	setCellValue          = 4
)

// schemaKnown is whether the messages the encoder writes have exactly the
// fields it writes (and, for an entry, its idempotency, which sends the
// request to the proto codec). A client library with a field more turns
// the encoder off rather than drop the field.
var schemaKnown = fieldsAre((*btpb.MutateRowsRequest)(nil).ProtoReflect().Descriptor(), reqTableName, reqEntries, reqAppProfileID, reqAuthorizedViewName) &&
	fieldsAre((*btpb.MutateRowsRequest_Entry)(nil).ProtoReflect().Descriptor(), entryRowKey, entryMutations, entryIdempotency) &&
	fieldsAre((*btpb.Mutation_SetCell)(nil).ProtoReflect().Descriptor(), setCellFamily, setCellColumn, setCellTimestamp, setCellValue) &&
	(*btpb.Mutation)(nil).ProtoReflect().Descriptor().Fields().ByNumber(mutationSetCell).Name() == "set_cell"

func fieldsAre(d protoreflect.MessageDescriptor, numbers ...protoreflect.FieldNumber) bool {
	fields := d.Fields()
	if fields.Len() != len(numbers) {
		return false
	}
	for i := range fields.Len() {
		if !slices.Contains(numbers, fields.Get(i).Number()) {
			return false
		}
	}
	return true
}

// encodesMutateRows reports whether the encoder writes every field req has
// set: all its mutations are SetCell, no entry asks for idempotency, and
// no message holds unknown fields.
func encodesMutateRows(req *btpb.MutateRowsRequest) bool {
	if !schemaKnown || len(req.ProtoReflect().GetUnknown()) > 0 {
		return false
	}
	for _, e := range req.Entries {
		if e == nil || e.Idempotency != nil || len(e.ProtoReflect().GetUnknown()) > 0 {
			return false
		}
		for _, m := range e.Mutations {
			sc, ok := m.GetMutation().(*btpb.Mutation_SetCell_)
			if !ok || sc.SetCell == nil || len(m.ProtoReflect().GetUnknown()) > 0 || len(sc.SetCell.ProtoReflect().GetUnknown()) > 0 {
				return false
			}
		}
	}
	return true
}

// Every field the encoder writes has a number below 16 and so a one-byte
// tag; lengths below 128 take one byte too.

func tag(num protowire.Number, typ protowire.Type) byte { return byte(num)<<3 | byte(typ) }

func sizeLen(n int) int {
	if n < 0x80 {
		return 1
	}
	return protowire.SizeVarint(uint64(n))
}

func appendLen(b []byte, n int) []byte {
	if n < 0x80 {
		return append(b, byte(n))
	}
	return protowire.AppendVarint(b, uint64(n))
}

// sizeBytes is the size of a length-delimited field of n bytes, which
// proto3 leaves out when empty; sizeMessage that of an embedded message,
// which is written even when empty.
func sizeBytes(n int) int {
	if n == 0 {
		return 0
	}
	return 1 + sizeLen(n) + n
}

func sizeMessage(n int) int { return 1 + sizeLen(n) + n }

func sizeSetCell(c *btpb.Mutation_SetCell) int {
	n := sizeBytes(len(c.FamilyName)) + sizeBytes(len(c.ColumnQualifier)) + sizeBytes(len(c.Value))
	if c.TimestampMicros != 0 {
		n += 1 + protowire.SizeVarint(uint64(c.TimestampMicros))
	}
	return n
}

func sizeEntry(e *btpb.MutateRowsRequest_Entry) int {
	n := sizeBytes(len(e.RowKey))
	for _, m := range e.Mutations {
		n += sizeMessage(sizeMessage(sizeSetCell(m.GetSetCell())))
	}
	return n
}

func sizeMutateRows(req *btpb.MutateRowsRequest) int {
	n := sizeBytes(len(req.TableName)) + sizeBytes(len(req.AppProfileId)) + sizeBytes(len(req.AuthorizedViewName))
	for _, e := range req.Entries {
		n += sizeMessage(sizeEntry(e))
	}
	return n
}

func appendBytes[S string | []byte](b []byte, num protowire.Number, v S) []byte {
	if len(v) == 0 {
		return b
	}
	return append(appendLen(append(b, tag(num, protowire.BytesType)), len(v)), v...)
}

// appendMutateRows appends req's encoding in field-number order, as the
// protobuf runtime writes it.
func appendMutateRows(b []byte, req *btpb.MutateRowsRequest) []byte {
	b = appendBytes(b, reqTableName, req.TableName)
	for _, e := range req.Entries {
		b = appendLen(append(b, tag(reqEntries, protowire.BytesType)), sizeEntry(e))
		b = appendBytes(b, entryRowKey, e.RowKey)
		for _, m := range e.Mutations {
			c := m.GetSetCell()
			n := sizeSetCell(c)
			b = appendLen(append(b, tag(entryMutations, protowire.BytesType)), sizeMessage(n))
			b = appendLen(append(b, tag(mutationSetCell, protowire.BytesType)), n)
			b = appendBytes(b, setCellFamily, c.FamilyName)
			b = appendBytes(b, setCellColumn, c.ColumnQualifier)
			if c.TimestampMicros != 0 {
				b = protowire.AppendVarint(append(b, tag(setCellTimestamp, protowire.VarintType)), uint64(c.TimestampMicros))
			}
			b = appendBytes(b, setCellValue, c.Value)
		}
	}
	b = appendBytes(b, reqAppProfileID, req.AppProfileId)
	return appendBytes(b, reqAuthorizedViewName, req.AuthorizedViewName)
}
